package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// maxBody is the largest request body the admin API reads (CONTRACT §4: 413).
const maxBody = 1 << 20

// adminServer is the admin API listener: /v1, /health/*, /metrics. It belongs
// to the node, so it survives Caddy config reloads.
type adminServer struct {
	n   *Node
	ln  net.Listener
	srv *http.Server
}

func newAdminServer(n *Node) (*adminServer, error) {
	ln, err := net.Listen("tcp", n.cfg.AdminListen)
	if err != nil {
		return nil, fmt.Errorf("listening on admin_listen %s: %w", n.cfg.AdminListen, err)
	}
	if n.cfg.AdminTLSCert != "" {
		cert, err := tls.LoadX509KeyPair(n.cfg.AdminTLSCert, n.cfg.AdminTLSKey)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("loading admin_tls certificate: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	a := &adminServer{n: n, ln: ln}
	a.srv = &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(n.log().Named("admin")),
	}
	go func() { _ = a.srv.Serve(ln) }()
	return a, nil
}

func (a *adminServer) addr() string { return a.ln.Addr().String() }

func (a *adminServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// Event streams never end on their own: Shutdown waits for them until the
	// timeout, then Close cuts them.
	if err := a.srv.Shutdown(ctx); err != nil {
		_ = a.srv.Close()
	}
}

// route binds one path to handlers per method, each behind a role check;
// other methods get a JSON 405.
type route map[string]struct {
	role Role
	h    func(w http.ResponseWriter, r *http.Request, actor string)
}

func (a *adminServer) routes() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, rt route) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			m, ok := rt[r.Method]
			if !ok && r.Method == http.MethodHead {
				m, ok = rt[http.MethodGet]
			}
			if !ok {
				allow := ""
				for k := range rt {
					if allow != "" {
						allow += ", "
					}
					allow += k
				}
				w.Header().Set("Allow", allow)
				writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("%s is not allowed on %s; use %s", r.Method, r.URL.Path, allow))
				return
			}
			actor, ok := a.authorize(w, r, m.role)
			if !ok {
				return
			}
			if r.Method == http.MethodGet && r.URL.Query().Has("consistent") {
				// A linearizable read: wait until this node has applied what
				// the leader had committed when the read came in.
				if err := a.n.consistentRead(r.Context()); err != nil {
					if errors.Is(err, ErrHalted) {
						writeError(w, http.StatusServiceUnavailable, "node_halted", "a consistent read needs a node that applies the log: "+err.Error())
						return
					}
					w.Header().Set("Retry-After", "2")
					writeError(w, http.StatusServiceUnavailable, "no_quorum", "a consistent read needs a leader: "+err.Error())
					return
				}
				w.Header().Set("X-Cbproxy-Index", strconv.FormatUint(a.n.View().Index, 10))
			}
			m.h(w, r, actor)
		})
	}
	handle("/v1/services", route{"GET": {RoleRead, a.listServices}})
	handle("/v1/services/{svc}", route{
		"GET":    {RoleRead, a.getService},
		"PUT":    {RoleAdmin, a.putService},
		"DELETE": {RoleAdmin, a.deleteService},
	})
	handle("/v1/services/{svc}/weights", route{"PUT": {RoleOperate, a.putWeights}})
	handle("/v1/services/{svc}/switch", route{"POST": {RoleOperate, a.postSwitch}})
	handle("/v1/services/{svc}/pools/{pool}", route{"PUT": {RoleAdmin, a.putPool}})
	handle("/v1/services/{svc}/pools/{pool}/backends/{addr}/drain", route{
		"POST":   {RoleOperate, a.drain(state.ActionDrain)},
		"DELETE": {RoleOperate, a.drain(state.ActionUndrain)},
	})
	handle("/v1/services/{svc}/rollout", route{
		"GET":  {RoleRead, a.getRollout},
		"POST": {RoleOperate, a.startRollout},
	})
	for action, act := range map[string]string{
		"pause": state.ActionRolloutPause, "resume": state.ActionRolloutResume,
		"promote": state.ActionRolloutPromote, "abort": state.ActionRolloutAbort,
	} {
		handle("/v1/services/{svc}/rollout/"+action, route{"POST": {RoleOperate, a.changeRollout(act)}})
	}
	handle("/v1/services/{svc}/rollback", route{"POST": {RoleOperate, a.rollback}})
	handle("/v1/events", route{"GET": {RoleRead, a.listEvents}})
	handle("/v1/events/stream", route{"GET": {RoleRead, a.streamEvents}})
	handle("/v1/cluster", route{"GET": {RoleRead, a.getCluster}})
	handle("/v1/cluster/nodes/{id}", route{"DELETE": {RoleAdmin, a.deleteNode}})
	// Peers sign these with the cluster secret instead of a token.
	mux.HandleFunc("POST /v1/cluster/join", a.postJoin)
	mux.HandleFunc("POST /v1/cluster/notify", a.postNotify)

	mux.HandleFunc("/health/live", a.healthLive)
	mux.HandleFunc("/health/ready", a.healthReady)
	mux.HandleFunc("/health/deps", a.healthDeps)
	mux.Handle("/metrics", promhttp.HandlerFor(a.n.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no such endpoint %s %s; see the admin API in docs/api.md", r.Method, r.URL.Path))
	})
	return a.commonHeaders(mux)
}

// commonHeaders adds X-Cbproxy-Node and X-Cbproxy-Index to every answer
// (CONTRACT §4) and caps request bodies.
func (a *adminServer) commonHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Cbproxy-Node", a.n.cfg.NodeID)
		h.Set("X-Cbproxy-Index", strconv.FormatUint(a.n.View().Index, 10))
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		next.ServeHTTP(w, r)
	})
}

// authorize checks the bearer token against the role a route needs and returns
// the actor name for the event trail. Without tokens, only loopback callers are
// let in, as admin ("local").
func (a *adminServer) authorize(w http.ResponseWriter, r *http.Request, need Role) (string, bool) {
	tokens := *a.n.tokens.Load()
	if len(tokens) == 0 {
		if !isLoopbackRemote(r.RemoteAddr) {
			writeError(w, http.StatusForbidden, "forbidden", "no tokens are configured, so only loopback callers may use the admin API")
			return "", false
		}
		return "local", true
	}
	secret, ok := bearer(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="cbproxy"`)
		writeError(w, http.StatusUnauthorized, "unauthorized", "missing token: send Authorization: Bearer <token> (cbproxy --token or CBPROXY_TOKEN)")
		return "", false
	}
	tok, found := matchToken(tokens, secret)
	if !found {
		w.Header().Set("WWW-Authenticate", `Bearer realm="cbproxy", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "unauthorized", "unknown token")
		return "", false
	}
	if tok.Role < need {
		writeError(w, http.StatusForbidden, "forbidden", fmt.Sprintf("token %q has role %s; this call needs %s", tok.Name, tok.Role, need))
		return "", false
	}
	return tok.Name, true
}

// matchToken compares the secret with every token in constant time (over
// digests, so length differences do not leak either) and never stops early.
func matchToken(tokens []Token, secret string) (Token, bool) {
	got := sha256.Sum256([]byte(secret))
	var match Token
	found := 0
	for _, t := range tokens {
		want := sha256.Sum256([]byte(t.Secret))
		eq := subtle.ConstantTimeCompare(got[:], want[:])
		if eq == 1 && found == 0 {
			match = t
		}
		found |= eq
	}
	return match, found == 1
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !equalFoldASCII(h[:len(prefix)], prefix) {
		return "", false
	}
	return h[len(prefix):], true
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		ca, cb := a[i]|0x20, b[i]|0x20
		if ca != cb {
			return false
		}
	}
	return true
}

func isLoopbackRemote(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// apiError is the JSON error body of CONTRACT §4.
type apiError struct {
	Error   string  `json:"error"`
	Code    string  `json:"code"`
	Version *uint64 `json:"version,omitempty"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, apiError{Error: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":"encoding the answer failed","code":"internal"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// readBody reads a JSON request body strictly: unknown fields are errors, so a
// typo never silently does nothing. It writes the error answer itself.
func readBody(w http.ResponseWriter, r *http.Request, dst any) ([]byte, bool) {
	raw, ok := readRaw(w, r)
	if !ok || !decodeBody(w, raw, dst, false) {
		return nil, false
	}
	return raw, true
}

// readRaw reads the whole body (at most maxBody bytes, else 413).
func readRaw(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	raw, err := readAll(r)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("request body is over %d bytes", maxBody))
			return nil, false
		}
		writeError(w, http.StatusBadRequest, "invalid", "reading request body: "+err.Error())
		return nil, false
	}
	return raw, true
}

// decodeBody decodes raw strictly into dst; an empty body is an error unless
// optional (then dst stays as it is).
func decodeBody(w http.ResponseWriter, raw []byte, dst any, optional bool) bool {
	if len(bytes.TrimSpace(raw)) == 0 {
		if optional {
			return true
		}
		writeError(w, http.StatusBadRequest, "invalid", "request body is empty; send a JSON object")
		return false
	}
	if err := decodeStrict(raw, dst); err != nil {
		writeError(w, http.StatusBadRequest, "invalid", "malformed JSON body: "+err.Error())
		return false
	}
	return true
}

// digest is a short hex SHA-256, used to tell repeated requests apart.
func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:16])
}

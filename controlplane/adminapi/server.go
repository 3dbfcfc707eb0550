package adminapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/adminapi/console"
	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// maxBody is the largest request body the admin API reads (docs/api.md
// "Errors": 413 body_too_large).
const maxBody = 1 << 20

// Limits bound what one client can hold on the admin listener. Nobody
// is authenticated before the request's header is in, so a header must
// arrive within readHeader and the whole request (header and body) within
// read. The read limit ends with the request: net/http clears the deadline
// once the body is in, so an event stream lasts. An idle keep-alive
// connection is closed after idle.
type Limits struct {
	ReadHeader, Read, Idle time.Duration
	MaxHeaderBytes         int
}

// DefaultLimits: a 1 MiB body within 30 s is 35 KB/s, slower than any
// honest client; headers are a few hundred bytes.
var DefaultLimits = Limits{
	ReadHeader:     10 * time.Second,
	Read:           30 * time.Second,
	Idle:           60 * time.Second,
	MaxHeaderBytes: 64 << 10,
}

// Server is the admin API: /v1, /health/*, /metrics. It belongs to the
// node, so it survives Caddy config reloads.
type Server struct {
	Deps
	ln  net.Listener
	srv *http.Server
	log func() *zap.Logger

	tokens atomic.Pointer[[]Token]
	// tokensChanged is closed and replaced by SetTokens.
	tokensChanged atomic.Pointer[chan struct{}]
	// done is closed when the server stops: event streams end.
	done      chan struct{}
	closeOnce sync.Once

	// serviceJSON and listBodies make GET /v1/services cheap at 1,000
	// services (servicejson.go): the encoded replicated parts, and the
	// answers' buffers (*[]byte, ~1 MB each), reused so that each call does
	// not hand the garbage collector a megabyte.
	serviceJSON serviceJSONCache
	listBodies  sync.Pool

	// gateMu guards what recordGateRefusal keeps: by service, when this
	// node last recorded a refusal and how many it left out since.
	gateMu       sync.Mutex
	gateRecorded map[string]time.Time
	gateSkipped  map[string]int
}

// Listen opens the admin listener: TLS with the certificate and key when
// certFile is set. The node opens it before anything else, so its address
// is known (and advertised) from the start.
func Listen(addr, certFile, keyFile string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on admin_listen %s: %w", addr, err)
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("loading admin_tls certificate: %w", err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	return ln, nil
}

// Serve serves the admin API on ln (from Listen) until Close.
func Serve(ln net.Listener, deps Deps, cfg Config) *Server {
	if cfg.Logger == nil {
		nop := zap.NewNop()
		cfg.Logger = func() *zap.Logger { return nop }
	}
	a := &Server{Deps: deps, ln: ln, log: cfg.Logger, done: make(chan struct{}),
		gateRecorded: map[string]time.Time{}, gateSkipped: map[string]int{}}
	a.SetTokens(cfg.Tokens)
	limits := DefaultLimits
	if cfg.Limits != nil {
		limits = *cfg.Limits
	}
	a.srv = &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: limits.ReadHeader,
		ReadTimeout:       limits.Read,
		IdleTimeout:       limits.Idle,
		MaxHeaderBytes:    limits.MaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(a.log().Named("admin")),
	}
	go func() { _ = a.srv.Serve(ln) }()
	return a
}

// SetTokens replaces the tokens live. Event streams whose caller the new
// tokens no longer let read are closed.
func (a *Server) SetTokens(t []Token) {
	c := append([]Token(nil), t...)
	a.tokens.Store(&c)
	next := make(chan struct{})
	if prev := a.tokensChanged.Swap(&next); prev != nil {
		close(*prev)
	}
}

// tokensChange is closed by the next SetTokens.
func (a *Server) tokensChange() <-chan struct{} { return *a.tokensChanged.Load() }

// Addr is the address the admin API listens on.
func (a *Server) Addr() string { return a.ln.Addr().String() }

// Close stops the server: event streams end, and requests in flight get up
// to 2 s.
func (a *Server) Close() {
	a.closeOnce.Do(func() { close(a.done) })
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

func (a *Server) routes() http.Handler {
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
				if err := a.Node.ConsistentRead(r.Context()); err != nil {
					if errors.Is(err, raftnode.ErrHalted) {
						writeError(w, http.StatusServiceUnavailable, "node_halted", "a consistent read needs a node that applies the log: "+err.Error())
						return
					}
					w.Header().Set("Retry-After", "2")
					writeError(w, http.StatusServiceUnavailable, "no_quorum", "a consistent read needs a leader: "+err.Error())
					return
				}
				w.Header().Set("X-Cbproxy-Index", strconv.FormatUint(a.Node.View().Index, 10))
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
		"POST":   {RoleOperate, a.drain(state.DrainBackends)},
		"DELETE": {RoleOperate, a.drain(state.UndrainBackends)},
	})
	handle("/v1/services/{svc}/rollout", route{
		"GET":  {RoleRead, a.getRollout},
		"POST": {RoleOperate, a.startRollout},
	})
	for action, act := range map[string]state.RolloutAction{
		"pause": state.PauseRollout, "resume": state.ResumeRollout, "promote": state.PromoteRollout,
	} {
		handle("/v1/services/{svc}/rollout/"+action, route{"POST": {RoleOperate, a.changeRollout(act)}})
	}
	handle("/v1/services/{svc}/rollout/abort", route{"POST": {RoleOperate, a.abortRollout}})
	handle("/v1/services/{svc}/rollback", route{"POST": {RoleOperate, a.rollback}})
	handle("/v1/events", route{"GET": {RoleRead, a.listEvents}})
	handle("/v1/notifiers", route{"GET": {RoleRead, a.listNotifiers}})
	handle("/v1/notifiers/{name}", route{
		"GET":    {RoleRead, a.getNotifier},
		"PUT":    {RoleAdmin, a.putNotifier},
		"DELETE": {RoleAdmin, a.deleteNotifier},
	})
	handle("/v1/notifiers/{name}/test", route{"POST": {RoleOperate, a.testNotifier}})
	handle("/v1/events/stream", route{"GET": {RoleRead, a.streamEvents}})
	handle("/v1/cluster", route{"GET": {RoleRead, a.getCluster}})
	handle("/v1/cluster/nodes/{id}", route{"DELETE": {RoleAdmin, a.deleteNode}})
	// Peers sign these with the cluster secret instead of a token.
	mux.HandleFunc("POST /v1/cluster/join", a.postJoin)
	mux.HandleFunc("POST /v1/cluster/notify", a.postNotify)

	mux.HandleFunc("/health/live", a.healthLive)
	mux.HandleFunc("/health/ready", a.healthReady)
	mux.HandleFunc("/health/deps", a.healthDeps)
	mux.Handle("/metrics", promhttp.HandlerFor(a.Metrics, promhttp.HandlerOpts{}))
	// The web console (docs/console.md): public files; the calls it makes
	// go through the routes above, with the caller's token.
	ui := console.NewHandler()
	mux.Handle(console.Prefix, ui)
	mux.Handle(strings.TrimSuffix(console.Prefix, "/"), ui)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no such endpoint %s %s; see the admin API in docs/api.md", r.Method, r.URL.Path))
	})
	return a.commonHeaders(mux)
}

// commonHeaders adds X-Cbproxy-Node and X-Cbproxy-Index to every answer
// (docs/api.md "Headers") and caps request bodies.
func (a *Server) commonHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Cbproxy-Node", a.Node.ID())
		h.Set("X-Cbproxy-Index", strconv.FormatUint(a.Node.View().Index, 10))
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		next.ServeHTTP(w, r)
	})
}

// authorize checks the bearer token against the role a route needs and returns
// the actor name for the event trail. Without tokens, only loopback callers are
// let in, as admin ("local"). It writes the refusal itself.
func (a *Server) authorize(w http.ResponseWriter, r *http.Request, need Role) (string, bool) {
	actor, refused := a.checkCaller(r, need)
	if refused != nil {
		dropUnreadBody(w, r)
		if refused.challenge != "" {
			w.Header().Set("WWW-Authenticate", refused.challenge)
		}
		writeError(w, refused.status, refused.code, refused.msg)
		return "", false
	}
	return actor, true
}

// dropUnreadBody makes the server close the connection after it refused a
// caller, instead of reading the rest of a body it will not use: net/http
// reads up to 256 KiB of it before it closes, as slowly as the caller sends.
func dropUnreadBody(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
	}
}

// refusal is why a caller is not let in.
type refusal struct {
	status    int
	code, msg string
	challenge string // WWW-Authenticate, when there is one
}

// checkCaller judges a request against the tokens as they are now: event
// streams ask again whenever the tokens change.
func (a *Server) checkCaller(r *http.Request, need Role) (string, *refusal) {
	tokens := *a.tokens.Load()
	if len(tokens) == 0 {
		if !isLoopbackRemote(r.RemoteAddr) {
			return "", &refusal{status: http.StatusForbidden, code: "forbidden", msg: "no tokens are configured, so only loopback callers may use the admin API"}
		}
		return "local", nil
	}
	secret, ok := bearer(r)
	if !ok {
		return "", &refusal{status: http.StatusUnauthorized, code: "unauthorized", challenge: `Bearer realm="cbproxy"`,
			msg: "missing token: send Authorization: Bearer <token> (cbproxy --token or CBPROXY_TOKEN)"}
	}
	tok, found := matchToken(tokens, secret)
	if !found {
		return "", &refusal{status: http.StatusUnauthorized, code: "unauthorized", challenge: `Bearer realm="cbproxy", error="invalid_token"`, msg: "unknown token"}
	}
	if tok.Role < need {
		return "", &refusal{status: http.StatusForbidden, code: "forbidden", msg: fmt.Sprintf("token %q has role %s; this call needs %s", tok.Name, tok.Role, need)}
	}
	return tok.Name, nil
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

// apiError is the JSON error body (docs/api.md "Errors").
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

// Handler is the admin API's HTTP handler, as the listener serves it.
func (a *Server) Handler() http.Handler { return a.srv.Handler }

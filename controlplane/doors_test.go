package controlplane

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/adminapi"
	"github.com/cbproxy/cbproxy/controlplane/cluster"
	"github.com/cbproxy/cbproxy/controlplane/internal/seams"
	"github.com/cbproxy/cbproxy/controlplane/raftnode"
	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap/zaptest"
)

// errStrangerRefused: the node refused the stranger's handshake.
var errStrangerRefused = errors.New("handshake refused")

// strangerPropose speaks the cluster protocol by hand, as an attacker who is
// not bound by this module's transport would: a hello, then a proof under the
// secret it guesses (it ignores the server's proof), then one propose frame.
// It returns nil only when the node answered the propose without an error.
func strangerPropose(addr, secret string, cmd state.Command) error {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	const self = "127.0.0.1:1"
	var nonce [32]byte
	_, _ = rand.Read(nonce[:])
	hello := append([]byte("cbpx"), 1, 2) // version 1, purpose RPC
	hello = append(hello, nonce[:]...)
	hello = append(append(hello, byte(len(self))), self...)
	if _, err := conn.Write(hello); err != nil {
		return err
	}
	var challenge [1 + 32 + 32]byte
	if _, err := io.ReadFull(conn, challenge[:]); err != nil || challenge[0] != 0 {
		return fmt.Errorf("%w: challenge %v %v", errStrangerRefused, challenge[0], err)
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("cli"))
	m.Write([]byte{1, 2})
	m.Write(nonce[:])
	m.Write(challenge[1:33])
	m.Write([]byte{byte(len(self))})
	m.Write([]byte(self))
	if _, err := conn.Write(append([]byte{0}, m.Sum(nil)...)); err != nil {
		return err
	}
	var verdict [1]byte
	if _, err := io.ReadFull(conn, verdict[:]); err != nil || verdict[0] != 0 {
		return fmt.Errorf("%w: verdict %v %v", errStrangerRefused, verdict[0], err)
	}
	body, _ := json.Marshal(cmd)
	req, _ := json.Marshal(map[string]any{"id": 1, "method": "propose", "body": json.RawMessage(body), "timeout_ms": 5000})
	frame := binary.BigEndian.AppendUint32(nil, uint32(len(req)))
	if _, err := conn.Write(append(frame, req...)); err != nil {
		return err
	}
	var hdr [4]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return err
	}
	answer := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(conn, answer); err != nil {
		return err
	}
	var resp struct {
		Error *struct{ Message string } `json:"error"`
	}
	if err := json.Unmarshal(answer, &resp); err != nil {
		return err
	}
	if resp.Error != nil {
		return errors.New(resp.Error.Message)
	}
	return nil
}

// TestStrangerOnClusterPort: a single node started without cluster_secret
// (the default) does not let anyone who reaches its cluster port write:
// neither by hand with the empty secret or a guess, nor with this module's
// own transport and a guessed secret.
func TestStrangerOnClusterPort(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	if code, _, b := c.do("PUT", "/v1/services/svc", demoService); code != 200 {
		t.Fatalf("put: %d %v", code, b)
	}
	cmd := state.Command{Envelope: state.Envelope{Service: "svc", Actor: "stranger", IdemKey: "stranger:1", IdemHash: "stranger"}, Payload: state.SetWeights{Weights: state.Weights{"canary": state.Total}}}
	for _, guess := range []string{"", "secret", "cbproxy"} {
		if err := strangerPropose(n.raft.ClusterAddr(), guess, cmd); !errors.Is(err, errStrangerRefused) {
			t.Errorf("stranger with secret %q by hand: %v, want the handshake refused", guess, err)
		}
	}
	tr, err := cluster.Listen(cluster.Config{Listen: "127.0.0.1:0", Auth: cluster.Auth{Secret: "guess"}, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tr.Call(ctx, n.raft.ClusterAddr(), "propose", cmd, nil); !errors.Is(err, cluster.ErrAuth) {
		t.Errorf("stranger with the transport: %v, want %v", err, cluster.ErrAuth)
	}
	if w := n.View().Services["svc"].Weights; w["canary"] != 0 {
		t.Fatalf("the stranger moved traffic: weights %v", w)
	}
}

// signedPost sends a cluster-signed POST with the given secret.
func signedPost(t *testing.T, addr, path, secret string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+addr+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	cluster.SignCall(req, secret, body)
	return sendRequest(t, req)
}

func sendRequest(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestStrangerOnJoinCall: a single node without cluster_secret refuses a
// join signed with the empty secret or a wrong one, and takes a node that
// holds the secret it generated in its data dir (the runbook: copy the file's
// content into the new node's cluster_secret).
func TestStrangerOnJoinCall(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir)
	stranger := startNodeTuned(t, t.TempDir(), func(c *Config) { c.NodeID = "stranger" })
	body, _ := json.Marshal(raftnode.JoinBody{NodeID: "stranger", ClusterAddr: stranger.raft.ClusterAddr(), AdminAddr: stranger.AdminAddr()})
	for _, secret := range []string{"", "wrong"} {
		if code, msg := signedPost(t, n.AdminAddr(), "/v1/cluster/join", secret, body); code != 401 {
			t.Errorf("join signed with %q: %d %s, want 401", secret, code, msg)
		}
	}
	if n.View().Nodes["stranger"].ID != "" || len(seams.RaftOf(n.raft).GetConfiguration().Configuration().Servers) != 1 {
		t.Fatal("the stranger joined")
	}

	secret, err := os.ReadFile(filepath.Join(dir, "cluster-secret"))
	if err != nil {
		t.Fatalf("the node keeps no generated secret: %v", err)
	}
	joiner, err := Start(Config{NodeID: "node2", DataDir: t.TempDir(), ClusterListen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
		Join: []string{n.AdminAddr()}, ClusterSecret: strings.TrimSpace(string(secret)), Logger: zaptest.NewLogger(t).Named("node2"),
		raft: singleNodeRaft})
	if err != nil {
		t.Fatal(err)
	}
	defer joiner.shutdown(false)
	waitUntil(t, "node2 to join with the generated secret", func() bool {
		return joiner.Ready() && n.View().Nodes["node2"].ID == "node2"
	})
}

// TestSignedCallReplayedOnce: a cluster-signed call is accepted once; the
// same request sent again is refused.
func TestSignedCallReplayedOnce(t *testing.T) {
	n := startNodeTuned(t, t.TempDir(), func(c *Config) { c.ClusterSecret = "s3cret" })
	body, _ := json.Marshal(raftnode.JoinBody{NodeID: "peer", ClusterAddr: "127.0.0.1:1", AdminAddr: "127.0.0.1:2"})
	req, err := http.NewRequest("POST", "http://"+n.AdminAddr()+"/v1/cluster/notify", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	cluster.SignCall(req, "s3cret", body)
	replay := req.Clone(context.Background())
	replay.Body = io.NopCloser(bytes.NewReader(body))
	if code, msg := sendRequest(t, req); code != 200 {
		t.Fatalf("signed notify: %d %s", code, msg)
	}
	if code, msg := sendRequest(t, replay); code != 401 {
		t.Fatalf("replayed notify: %d %s, want 401", code, msg)
	}
}

// TestEventStreamEndsWithItsToken: a reload that removes a token ends the
// event streams opened with it; streams of tokens that remain go on, also
// past the server's read timeout.
func TestEventStreamEndsWithItsToken(t *testing.T) {
	limits := adminapi.DefaultLimits
	limits.Read = time.Second
	n := startNodeTuned(t, t.TempDir(), func(c *Config) {
		c.Tokens = []adminapi.Token{
			{Name: "viewer", Secret: "view-secret", Role: adminapi.RoleRead},
			{Name: "ops", Secret: "ops-secret", Role: adminapi.RoleAdmin},
		}
		c.adminLimits = &limits
	})
	open := func(token string) <-chan string {
		req, _ := http.NewRequest("GET", "http://"+n.AdminAddr()+"/v1/events/stream", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("stream with %s: %v %v", token, resp, err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		lines := make(chan string, 100)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		return lines
	}
	viewer, ops := open("view-secret"), open("ops-secret")
	n.SetTokens([]adminapi.Token{{Name: "ops", Secret: "ops-secret", Role: adminapi.RoleAdmin}})
	timeout := time.After(10 * time.Second)
	for ended := false; !ended; {
		select {
		case _, ok := <-viewer:
			ended = !ok
		case <-timeout:
			t.Fatal("the stream of a removed token is still open after 10 s")
		}
	}
	time.Sleep(2 * limits.Read) // the stream outlives the read timeout
	c := newClient(t, n)
	c.token = "ops-secret"
	if code, _, b := c.do("PUT", "/v1/services/svc", demoService); code != 200 {
		t.Fatalf("put: %d %v", code, b)
	}
	for {
		select {
		case line, ok := <-ops:
			if !ok {
				t.Fatal("the stream of a kept token ended")
			}
			if strings.HasPrefix(line, "event: service_put") {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the stream of a kept token got no event")
		}
	}
}

// TestWildcardAdminAdvertised: a node whose admin API listens on a wildcard
// address advertises one its peers can dial: its cluster host with the admin
// port, not [::].
func TestWildcardAdminAdvertised(t *testing.T) {
	n := startNodeTuned(t, t.TempDir(), func(c *Config) {
		c.AdminListen = "0.0.0.0:0"
		c.Tokens = []adminapi.Token{{Name: "root", Secret: "root-secret", Role: adminapi.RoleAdmin}}
	})
	_, port, _ := net.SplitHostPort(n.AdminAddr())
	want := net.JoinHostPort("127.0.0.1", port)
	c := &client{t: t, base: "http://" + want, token: "root-secret"}
	code, _, b := c.do("GET", "/v1/cluster", "")
	if code != 200 {
		t.Fatalf("cluster: %d %v", code, b)
	}
	if got := b["nodes"].([]any)[0].(map[string]any)["admin_addr"]; got != want {
		t.Errorf("GET /v1/cluster admin_addr %v, want %s", got, want)
	}
	waitUntil(t, "the node list to hold the advertised admin address", func() bool {
		return n.View().Nodes["node1"].AdminAddr == want
	})
}

// slowClient is one connection that trickles a request and never finishes it.
type slowClient struct {
	conn   net.Conn
	kind   string
	opened time.Time
	closed chan time.Duration // when the server closed it
}

// TestSlowClientsBounded: unauthenticated clients that trickle headers or
// bodies are cut off within the admin server's timeouts, and the goroutines
// and memory they held are given back.
func TestSlowClientsBounded(t *testing.T) {
	limits := adminapi.Limits{ReadHeader: time.Second, Read: 2 * time.Second, Idle: 5 * time.Second, MaxHeaderBytes: 64 << 10}
	n := startNodeTuned(t, t.TempDir(), func(c *Config) {
		c.Tokens = []adminapi.Token{{Name: "root", Secret: "root-secret", Role: adminapi.RoleAdmin}}
		c.adminLimits = &limits
	})
	addr := n.AdminAddr()
	kinds := map[string]string{
		// A header line that never ends.
		"header": "GET /v1/services HTTP/1.1\r\nHost: admin\r\nX-Slow: ",
		// A body for an endpoint that needs a token, sent without one.
		"bearer body": "PUT /v1/services/svc HTTP/1.1\r\nHost: admin\r\nContent-Length: 100000\r\n\r\n{",
		// A body for an endpoint that needs a token, with the token: the
		// caller may write, not hold the server forever.
		"authorized body": "PUT /v1/services/svc HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer root-secret\r\nContent-Length: 100000\r\n\r\n{",
		// A body for a signed call, with a signature that is wrong.
		"signed body": fmt.Sprintf("POST /v1/cluster/join HTTP/1.1\r\nHost: admin\r\nAuthorization: %sts=%d,mac=00\r\nContent-Length: %d\r\n\r\n{",
			"Cbproxy-Cluster ", time.Now().Unix(), 1<<20),
	}
	const perKind = 20
	// The longest a slow client may hold its connection: a header must be
	// complete within readHeader, the whole request within read; a caller
	// refused before its body is read is answered at once.
	within := map[string]time.Duration{"header": limits.ReadHeader, "bearer body": 0, "authorized body": limits.Read, "signed body": 0}

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutinesBefore := runtime.NumGoroutine()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var clients []*slowClient
	for kind, start := range kinds {
		for range perKind {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			sc := &slowClient{conn: conn, kind: kind, opened: time.Now(), closed: make(chan time.Duration, 1)}
			clients = append(clients, sc)
			wg.Add(2)
			go func() { // trickle one byte every 200 ms until the server hangs up
				defer wg.Done()
				if _, err := io.WriteString(conn, start); err != nil {
					return
				}
				for {
					select {
					case <-stop:
						return
					case <-time.After(200 * time.Millisecond):
					}
					if _, err := conn.Write([]byte("a")); err != nil {
						return
					}
				}
			}()
			go func() { // the server's answer, then its close
				defer wg.Done()
				_, _ = io.Copy(io.Discard, conn)
				sc.closed <- time.Since(sc.opened)
				conn.Close()
			}()
		}
	}
	peakGoroutines := runtime.NumGoroutine()
	deadline := time.Now().Add(limits.Read + 10*time.Second)
	stillOpen := map[string]int{}
	for _, sc := range clients {
		select {
		case d := <-sc.closed:
			if d > within[sc.kind]+2*time.Second {
				t.Errorf("%s: the server held the connection for %s, beyond its limit %s", sc.kind, d.Round(time.Millisecond), within[sc.kind])
			}
		case <-time.After(time.Until(deadline)):
			stillOpen[sc.kind]++
		}
	}
	for kind, open := range stillOpen {
		t.Errorf("%s: %d of %d connections still open after %s", kind, open, perKind, limits.Read+10*time.Second)
	}
	close(stop)
	for _, sc := range clients {
		sc.conn.Close() // those the server left open
	}
	wg.Wait()

	waitUntil(t, "the goroutines of the slow clients to end", func() bool {
		return runtime.NumGoroutine() <= goroutinesBefore+5
	})
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	t.Logf("goroutines: %d before, %d with %d slow clients, %d after; heap in use: %d KiB before, %d KiB after",
		goroutinesBefore, peakGoroutines, len(clients), runtime.NumGoroutine(), before.HeapInuse>>10, after.HeapInuse>>10)
	if after.HeapInuse > before.HeapInuse+8<<20 {
		t.Errorf("heap in use grew from %d KiB to %d KiB", before.HeapInuse>>10, after.HeapInuse>>10)
	}
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startFleet serves the named backends on free loopback ports until the test ends.
func startFleet(t *testing.T, names ...string) map[string]*backend {
	t.Helper()
	cfg := config{versions: map[string]string{"blue": "v1.4.1"}, initial: defaultSettings()}
	for _, n := range names {
		cfg.backends = append(cfg.backends, namedValue{n, "127.0.0.1:0"})
	}
	f, err := start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := f.shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	byName := map[string]*backend{}
	for _, b := range f.backends {
		byName[b.name] = b
	}
	return byName
}

func defaultSettings() settings {
	return settings{ErrorStatus: 500, Health: "ok"}
}

func call(t *testing.T, method, url, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, cfg config)
	}{
		{
			name: "backends, versions and initial settings",
			args: []string{"-backends", "blue=127.0.0.1:9001, green=127.0.0.1:9002,canary=[::1]:9003",
				"-version", "blue=v1.4.1,canary=v1.5.0-rc1", "-error-rate", "0.05", "-error-status", "503",
				"-latency-ms", "7", "-health", "degraded"},
			check: func(t *testing.T, cfg config) {
				want := []namedValue{{"blue", "127.0.0.1:9001"}, {"green", "127.0.0.1:9002"}, {"canary", "[::1]:9003"}}
				if len(cfg.backends) != len(want) {
					t.Fatalf("backends = %v, want %v", cfg.backends, want)
				}
				for i := range want {
					if cfg.backends[i] != want[i] {
						t.Errorf("backend %d = %v, want %v", i, cfg.backends[i], want[i])
					}
				}
				if cfg.versions["blue"] != "v1.4.1" || cfg.versions["canary"] != "v1.5.0-rc1" || cfg.versions["green"] != "" {
					t.Errorf("versions = %v", cfg.versions)
				}
				if want := (settings{ErrorRate: 0.05, ErrorStatus: 503, LatencyMS: 7, Health: "degraded"}); cfg.initial != want {
					t.Errorf("initial = %+v, want %+v", cfg.initial, want)
				}
			},
		},
		{
			name: "defaults",
			args: []string{"-backends", "blue=localhost:0"},
			check: func(t *testing.T, cfg config) {
				if cfg.initial != defaultSettings() {
					t.Errorf("initial = %+v, want %+v", cfg.initial, defaultSettings())
				}
			},
		},
		{name: "no backends", args: nil, wantErr: "-backends is required"},
		{name: "item without =", args: []string{"-backends", "blue"}, wantErr: `"blue" is not name=value`},
		{name: "empty address", args: []string{"-backends", "blue="}, wantErr: "blue has an empty value"},
		{name: "bad name", args: []string{"-backends", "Blue=127.0.0.1:1"}, wantErr: `name "Blue" must be`},
		{name: "trailing comma", args: []string{"-backends", "blue=127.0.0.1:1,"}, wantErr: `"" is not name=value`},
		{name: "duplicate", args: []string{"-backends", "blue=127.0.0.1:1,blue=127.0.0.1:2"}, wantErr: "blue is listed twice"},
		{name: "address without port", args: []string{"-backends", "blue=127.0.0.1"}, wantErr: "address of blue"},
		{name: "version of unknown backend", args: []string{"-backends", "blue=127.0.0.1:1", "-version", "green=v2"}, wantErr: "green is not one of the -backends"},
		{name: "error rate too high", args: []string{"-backends", "blue=127.0.0.1:1", "-error-rate", "1.5"}, wantErr: "error_rate 1.5 must be between 0 and 1"},
		{name: "error status 200", args: []string{"-backends", "blue=127.0.0.1:1", "-error-status", "200"}, wantErr: "error_status 200"},
		{name: "negative latency", args: []string{"-backends", "blue=127.0.0.1:1", "-latency-ms", "-1"}, wantErr: "latency_ms -1"},
		{name: "unknown health", args: []string{"-backends", "blue=127.0.0.1:1", "-health", "sick"}, wantErr: `health "sick"`},
		{name: "positional argument", args: []string{"-backends", "blue=127.0.0.1:1", "extra"}, wantErr: `unexpected argument "extra"`},
		{name: "unknown flag", args: []string{"-backend", "blue=127.0.0.1:1"}, wantErr: "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseFlags(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, cfg)
		})
	}
}

func TestServeRequest(t *testing.T) {
	bs := startFleet(t, "blue", "green")
	tests := []struct {
		backend, path, wantPath, wantVersion string
	}{
		{"blue", "/x", "/x", "v1.4.1"},
		{"green", "/", "/", ""},
		{"green", "/a/b?q=1", "/a/b", ""},
		{"blue", `/quote%22back%5Cslash%3Cangle%3E%C3%A9%01`, "/quote\"back\\slash<angle>é\x01", "v1.4.1"},
	}
	for _, tt := range tests {
		t.Run(tt.backend+tt.path, func(t *testing.T) {
			b := bs[tt.backend]
			status, h, body := call(t, http.MethodGet, "http://"+b.addr+tt.path, "")
			if status != http.StatusOK {
				t.Fatalf("status = %d, body %s", status, body)
			}
			if got := h.Get("X-Backend"); got != tt.backend {
				t.Errorf("X-Backend = %q, want %q", got, tt.backend)
			}
			if got := h.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q", got)
			}
			var got map[string]string
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			want := map[string]string{"backend": tt.backend, "version": tt.wantVersion, "addr": b.addr, "path": tt.wantPath}
			if len(got) != len(want) {
				t.Errorf("body = %v, want %v", got, want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("body[%s] = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestControl(t *testing.T) {
	tests := []struct {
		name       string
		method     string
		body       string
		wantStatus int
		wantErr    string
		want       settings // the settings after the call
	}{
		{name: "read", method: http.MethodGet, wantStatus: 200, want: defaultSettings()},
		{name: "set all", method: http.MethodPut, body: `{"error_rate":0.05,"error_status":503,"latency_ms":3,"health":"degraded"}`,
			wantStatus: 200, want: settings{ErrorRate: 0.05, ErrorStatus: 503, LatencyMS: 3, Health: "degraded"}},
		{name: "partial keeps the rest", method: http.MethodPut, body: `{"health":"unhealthy"}`,
			wantStatus: 200, want: settings{ErrorStatus: 500, Health: "unhealthy"}},
		{name: "rate above 1", method: http.MethodPut, body: `{"error_rate":1.01}`, wantStatus: 400, wantErr: "error_rate 1.01 must be between 0 and 1", want: defaultSettings()},
		{name: "negative rate", method: http.MethodPut, body: `{"error_rate":-0.1}`, wantStatus: 400, wantErr: "error_rate", want: defaultSettings()},
		{name: "status not an error", method: http.MethodPut, body: `{"error_status":302}`, wantStatus: 400, wantErr: "error_status 302", want: defaultSettings()},
		{name: "latency too long", method: http.MethodPut, body: `{"latency_ms":60001}`, wantStatus: 400, wantErr: "latency_ms 60001", want: defaultSettings()},
		{name: "unknown health", method: http.MethodPut, body: `{"health":"fine"}`, wantStatus: 400, wantErr: `health "fine"`, want: defaultSettings()},
		{name: "unknown field", method: http.MethodPut, body: `{"error_rte":0.1}`, wantStatus: 400, wantErr: `unknown field "error_rte"`, want: defaultSettings()},
		{name: "wrong type", method: http.MethodPut, body: `{"latency_ms":"5"}`, wantStatus: 400, wantErr: "bad settings JSON", want: defaultSettings()},
		{name: "malformed", method: http.MethodPut, body: `{"health":`, wantStatus: 400, wantErr: "bad settings JSON", want: defaultSettings()},
		{name: "two objects", method: http.MethodPut, body: `{"health":"ok"} {}`, wantStatus: 400, wantErr: "data after the object", want: defaultSettings()},
		{name: "empty body", method: http.MethodPut, body: ``, wantStatus: 400, wantErr: "empty body", want: defaultSettings()},
		{name: "too large", method: http.MethodPut, body: `{"health":"ok"` + strings.Repeat(" ", maxControlBody) + `}`, wantStatus: 400, wantErr: "too large", want: defaultSettings()},
		{name: "wrong method", method: http.MethodPost, body: `{}`, wantStatus: 405, wantErr: "use GET to read or PUT", want: defaultSettings()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := startFleet(t, "blue")["blue"]
			url := "http://" + b.addr + "/_backend"
			status, _, body := call(t, tt.method, url, tt.body)
			if status != tt.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", status, tt.wantStatus, body)
			}
			if tt.wantErr != "" {
				var e struct{ Error string }
				if err := json.Unmarshal([]byte(body), &e); err != nil || !strings.Contains(e.Error, tt.wantErr) {
					t.Errorf("body %s: want an error containing %q", body, tt.wantErr)
				}
			}
			_, _, body = call(t, http.MethodGet, url, "")
			var got settings
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("settings = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestHealth(t *testing.T) {
	tests := []struct {
		health     string
		wantStatus int
		wantBody   string
	}{
		{"ok", 200, `{"status":"ok"}`},
		{"degraded", 200, `{"status":"degraded"}`},
		{"unhealthy", 503, `{"status":"unhealthy"}`},
	}
	b := startFleet(t, "blue")["blue"]
	for _, tt := range tests {
		t.Run(tt.health, func(t *testing.T) {
			if status, _, body := call(t, http.MethodPut, "http://"+b.addr+"/_backend", `{"health":"`+tt.health+`"}`); status != 200 {
				t.Fatalf("PUT: %d %s", status, body)
			}
			status, _, body := call(t, http.MethodGet, "http://"+b.addr+"/health/ready", "")
			if status != tt.wantStatus || strings.TrimSpace(body) != tt.wantBody {
				t.Errorf("health = %d %s, want %d %s", status, body, tt.wantStatus, tt.wantBody)
			}
			// Health does not change what a request gets.
			if status, _, _ := call(t, http.MethodGet, "http://"+b.addr+"/x", ""); status != 200 {
				t.Errorf("request status = %d with health %s", status, tt.health)
			}
		})
	}
}

func TestErrorPattern(t *testing.T) {
	tests := []struct {
		rate       float64
		status     int
		n          int
		wantFailed []int // 1-based request numbers that fail
	}{
		{0.05, 500, 100, []int{20, 40, 60, 80, 100}},
		{0.3, 503, 10, []int{4, 7, 10}},
		{0.29, 502, 100, nil}, // checked by count below: float rounding must not lose one
		{0.5, 500, 6, []int{2, 4, 6}},
		{1, 429, 3, []int{1, 2, 3}},
		{0, 500, 50, []int{}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("rate=%v", tt.rate), func(t *testing.T) {
			b := startFleet(t, "blue")["blue"]
			base := "http://" + b.addr
			put := fmt.Sprintf(`{"error_rate":%v,"error_status":%d}`, tt.rate, tt.status)
			if status, _, body := call(t, http.MethodPut, base+"/_backend", put); status != 200 {
				t.Fatalf("PUT %s: %d %s", put, status, body)
			}
			var failed []int
			for i := 1; i <= tt.n; i++ {
				status, h, _ := call(t, http.MethodGet, base+"/r", "")
				if h.Get("X-Backend") != "blue" {
					t.Errorf("request %d: X-Backend = %q", i, h.Get("X-Backend"))
				}
				switch status {
				case 200:
				case tt.status:
					failed = append(failed, i)
				default:
					t.Fatalf("request %d: status %d", i, status)
				}
			}
			wantCount := int(float64(tt.n)*tt.rate + 1e-9)
			if len(failed) != wantCount {
				t.Errorf("%d of %d failed, want %d", len(failed), tt.n, wantCount)
			}
			if tt.wantFailed != nil && !equalInts(failed, tt.wantFailed) {
				t.Errorf("failed requests %v, want %v", failed, tt.wantFailed)
			}
			_, _, body := call(t, http.MethodGet, base+"/_backend/stats", "")
			var st stats
			if err := json.Unmarshal([]byte(body), &st); err != nil {
				t.Fatal(err)
			}
			if want := (stats{Requests: uint64(tt.n), Errors: uint64(len(failed))}); st != want {
				t.Errorf("stats = %+v, want %+v", st, want)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPutRestartsErrorPattern(t *testing.T) {
	b := startFleet(t, "blue")["blue"]
	base := "http://" + b.addr
	call(t, http.MethodPut, base+"/_backend", `{"error_rate":0.25}`)
	for range 3 {
		call(t, http.MethodGet, base+"/", "")
	}
	// The 4th request since the first PUT would fail; a new PUT starts over.
	call(t, http.MethodPut, base+"/_backend", `{"error_rate":0.25}`)
	for i := 1; i <= 4; i++ {
		status, _, _ := call(t, http.MethodGet, base+"/", "")
		if want := map[bool]int{true: 500, false: 200}[i == 4]; status != want {
			t.Errorf("request %d after the PUT: status %d, want %d", i, status, want)
		}
	}
}

func TestBackendsAreIndependent(t *testing.T) {
	bs := startFleet(t, "blue", "green")
	call(t, http.MethodPut, "http://"+bs["blue"].addr+"/_backend", `{"error_rate":1,"health":"unhealthy"}`)
	if status, _, _ := call(t, http.MethodGet, "http://"+bs["blue"].addr+"/", ""); status != 500 {
		t.Errorf("blue status = %d, want 500", status)
	}
	if status, _, _ := call(t, http.MethodGet, "http://"+bs["green"].addr+"/", ""); status != 200 {
		t.Errorf("green status = %d, want 200", status)
	}
	if status, _, _ := call(t, http.MethodGet, "http://"+bs["green"].addr+"/health/ready", ""); status != 200 {
		t.Errorf("green health = %d, want 200", status)
	}
	_, _, body := call(t, http.MethodGet, "http://"+bs["green"].addr+"/_backend/stats", "")
	var st stats
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if want := (stats{Requests: 1, HealthChecks: 1}); st != want {
		t.Errorf("green stats = %+v, want %+v", st, want)
	}
}

func TestLatency(t *testing.T) {
	b := startFleet(t, "blue")["blue"]
	const latency = 80 * time.Millisecond
	call(t, http.MethodPut, "http://"+b.addr+"/_backend", `{"latency_ms":80}`)
	begin := time.Now()
	if status, _, _ := call(t, http.MethodGet, "http://"+b.addr+"/slow", ""); status != 200 {
		t.Fatalf("status = %d", status)
	}
	if d := time.Since(begin); d < latency {
		t.Errorf("request took %v, want at least %v", d, latency)
	}
}

func TestStartReleasesAddressesOnFailure(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()

	cfg := config{backends: []namedValue{{"blue", freeAddr}, {"green", busy.Addr().String()}}, initial: defaultSettings()}
	if _, err := start(cfg); err == nil || !strings.Contains(err.Error(), "backend green") {
		t.Fatalf("start with a busy address: err = %v, want one naming backend green", err)
	}
	ln, err := net.Listen("tcp", freeAddr)
	if err != nil {
		t.Fatalf("blue's address was not released: %v", err)
	}
	ln.Close()
}

func TestShutdownLetsRequestsFinish(t *testing.T) {
	cfg := config{backends: []namedValue{{"blue", "127.0.0.1:0"}}, initial: settings{ErrorStatus: 500, LatencyMS: 300, Health: "ok"}}
	f, err := start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // in case the test fails before its own shutdown
		for _, srv := range f.servers {
			srv.Close()
		}
	})
	addr := f.backends[0].addr
	done := make(chan int)
	go func() {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	for deadline := time.Now().Add(5 * time.Second); f.backends[0].requests.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the request never reached the backend")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := f.shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if status := <-done; status != 200 {
		t.Errorf("request in flight at shutdown got %d, want 200", status)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("address still accepts connections after shutdown")
	}
}

// TestSignalStop runs the real main in a child process and stops it with SIGTERM.
func TestSignalStop(t *testing.T) {
	if os.Getenv("CBPROXY_BACKEND_CHILD") == "1" {
		os.Args = []string{"cbproxy-backend", "-backends", "blue=127.0.0.1:0", "-version", "blue=v9"}
		main()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSignalStop$")
	cmd.Env = append(os.Environ(), "CBPROXY_BACKEND_CHILD=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	line, err := bufio.NewReader(stderr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the start line: %v", err)
	}
	m := regexp.MustCompile(`listening on (\S+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("start line %q names no address", line)
	}
	if status, h, _ := call(t, http.MethodGet, "http://"+m[1]+"/", ""); status != 200 || h.Get("X-Backend") != "blue" {
		t.Fatalf("child answered %d, X-Backend %q", status, h.Get("X-Backend"))
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Errorf("child exited with %v after SIGTERM, want a clean exit", err)
		}
	case <-time.After(shutdownTimeout + 5*time.Second):
		t.Fatal("child did not stop after SIGTERM")
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "/", "/a/b", `/"`, `\`, "<&>", "é", "\x00\x1f\x7f", "\xff", "\u2028"} {
		if got, want := string(appendJSONString([]byte("x"), s)), "x"+string(jsonString(s)); got != want {
			t.Errorf("appendJSONString(%q) = %s, want %s", s, got, want)
		}
	}
}

// discardWriter is the least a ResponseWriter can do, so that the benchmark
// measures the handler alone.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

func BenchmarkServeRequest(b *testing.B) {
	be := newBackend("blue", "v1.4.1", "127.0.0.1:9001", settings{ErrorRate: 0.01, ErrorStatus: 500, Health: "ok"})
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:9001/api/v1/items", nil)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		be.ServeHTTP(w, req)
	}
}

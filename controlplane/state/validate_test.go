package state

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestValidateNames(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, tc := range []struct {
		name        string
		serviceOK   bool
		poolOK      bool
		description string
	}{
		{"codingbrain", true, true, "plain"},
		{"a", true, true, "one letter"},
		{"0svc", true, true, "starts with a digit"},
		{"my_svc-2", true, true, "underscore and dash"},
		{long[:32], true, true, "32 characters"},
		{long[:33], true, false, "33 characters"},
		{long, true, false, "63 characters"},
		{long + "a", false, false, "64 characters"},
		{"", false, false, "empty"},
		{"-svc", false, false, "starts with a dash"},
		{"_svc", false, false, "starts with an underscore"},
		{"Svc", false, false, "uppercase"},
		{"svc.x", false, false, "dot"},
		{"svc x", false, false, "space"},
		{"svc/x", false, false, "slash"},
	} {
		if err := ValidateServiceName(tc.name); (err == nil) != tc.serviceOK {
			t.Errorf("%s: ValidateServiceName(%q) = %v", tc.description, tc.name, err)
		}
		if err := ValidatePoolName(tc.name); (err == nil) != tc.poolOK {
			t.Errorf("%s: ValidatePoolName(%q) = %v", tc.description, tc.name, err)
		}
	}
}

func TestValidateBackend(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		wantErr string
	}{
		{addr: "10.0.0.11:8765"},
		{addr: "127.0.0.1:1"},
		{addr: "127.0.0.1:65535"},
		{addr: "[::1]:8080"},
		{addr: "[2001:db8::1]:443"},
		{addr: "[fe80::1%eth0]:80"},
		{addr: "localhost:8080"},
		{addr: "blue-1.internal.example.com:8765"},
		{addr: "my_service:80"},
		{addr: "https://10.0.0.11:8443"},
		{addr: "https://[::1]:8443"},
		{addr: "https://api.example.com:443"},
		{addr: "", wantErr: "backend address is empty"},
		{addr: "10.0.0.11", wantErr: "is not host:port"},
		{addr: "10.0.0.11:", wantErr: "is not a number from 1 to 65535"},
		{addr: "10.0.0.11:0", wantErr: "is not a number from 1 to 65535"},
		{addr: "10.0.0.11:65536", wantErr: "is not a number from 1 to 65535"},
		{addr: "10.0.0.11:080", wantErr: "is not a number from 1 to 65535"},
		{addr: "10.0.0.11:http", wantErr: "is not a number from 1 to 65535"},
		{addr: "10.0.0.11:-1", wantErr: "is not a number from 1 to 65535"},
		{addr: "::1:8080", wantErr: "needs brackets"},
		{addr: "2001:db8::1:8080", wantErr: "needs brackets"},
		{addr: "[10.0.0.1]:80", wantErr: "not an IPv6 address"},
		{addr: "[nonsense]:80", wantErr: "not an IPv6 address"},
		{addr: "http://10.0.0.11:80", wantErr: "scheme other than https://"},
		{addr: "ftp://host:21", wantErr: "scheme other than https://"},
		{addr: "https://https://host:1", wantErr: "scheme other than https://"},
		{addr: "10.0.0.11:80/path", wantErr: "path or query"},
		{addr: "https://host:443/", wantErr: "path or query"},
		{addr: "host:80?x=1", wantErr: "path or query"},
		{addr: "host:80#frag", wantErr: "path or query"},
		{addr: "user@host:80", wantErr: "user info"},
		{addr: "https://user:pw@host:80", wantErr: "user info"},
		{addr: "host :80", wantErr: "space"},
		{addr: "host:80\n", wantErr: "control character"},
		{addr: ":80", wantErr: "neither an IP address nor a DNS name"},
		{addr: "-host:80", wantErr: "neither an IP address nor a DNS name"},
		{addr: "host-:80", wantErr: "neither an IP address nor a DNS name"},
		{addr: "a..b:80", wantErr: "neither an IP address nor a DNS name"},
		{addr: "999.1.1.1:80", wantErr: "neither an IP address nor a DNS name"},
		{addr: "10.0.0:80", wantErr: "neither an IP address nor a DNS name"},
		{addr: "höst:80", wantErr: "neither an IP address nor a DNS name"},
		{addr: strings.Repeat("a", 64) + ":80", wantErr: "neither an IP address nor a DNS name"},
	} {
		err := ValidateBackend(tc.addr)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("ValidateBackend(%q) = %v, want error %q", tc.addr, err, tc.wantErr)
		}
	}
}

func TestValidateBackends(t *testing.T) {
	for _, tc := range []struct {
		addrs   []string
		wantErr string
	}{
		{addrs: nil},
		{addrs: []string{"10.0.0.1:80", "10.0.0.2:80"}},
		{addrs: []string{"https://a:443", "https://b:443"}},
		{addrs: []string{"10.0.0.1:80", "10.0.0.1:80"}, wantErr: `backend "10.0.0.1:80" is listed twice`},
		{addrs: []string{"10.0.0.1:80", "https://10.0.0.2:443"}, wantErr: "mix https:// and plain HTTP"},
		{addrs: []string{"https://10.0.0.2:443", "10.0.0.1:80"}, wantErr: "mix https:// and plain HTTP"},
		{addrs: []string{"10.0.0.1:80", "bad"}, wantErr: `backend "bad" is not host:port`},
	} {
		err := ValidateBackends(tc.addrs)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("ValidateBackends(%q) = %v, want error %q", tc.addrs, err, tc.wantErr)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// spec returns a valid spec with pools blue (two backends), green and canary.
func testSpec() ServiceSpec {
	return ServiceSpec{Pools: map[string]PoolSpec{
		"blue":   {Version: "v1", Backends: []string{"10.0.0.11:8765", "10.0.0.12:8765"}},
		"green":  {Backends: []string{"10.0.0.21:8765"}},
		"canary": {Version: "v2-rc1", Backends: []string{"10.0.0.31:8765"}},
	}}
}

func TestNormalizeSpecDefaults(t *testing.T) {
	s, err := NormalizeSpec("codingbrain", testSpec())
	if err != nil {
		t.Fatal(err)
	}
	want := &Service{
		Name: "codingbrain",
		Pools: map[string]*Pool{
			"blue":   {Version: "v1", Backends: []Backend{{Address: "10.0.0.11:8765"}, {Address: "10.0.0.12:8765"}}},
			"green":  {Backends: []Backend{{Address: "10.0.0.21:8765"}}},
			"canary": {Version: "v2-rc1", Backends: []Backend{{Address: "10.0.0.31:8765"}}},
		},
		// "blue" is first in name order.
		Weights: Weights{"blue": 10000, "canary": 0, "green": 0},
		LKG:     Weights{"blue": 10000, "canary": 0, "green": 0},
		SLO:     DefaultSLO,
		Guard:   DefaultGuard,
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("NormalizeSpec =\n%+v\nwant\n%+v", s, want)
	}

	spec := testSpec()
	spec.Weights = Weights{"canary": 500, "blue": 9500}
	spec.Health = &HealthCheck{Path: "/health/ready", Interval: Duration(5 * time.Second)}
	spec.SLO = &SLO{Rollback: Thresholds{ErrorRate: 0.05}, MinRequests: 10}
	spec.Guard = ptr(Duration(0))
	s, err = NormalizeSpec("codingbrain", spec)
	if err != nil {
		t.Fatal(err)
	}
	if w := (Weights{"blue": 9500, "canary": 500, "green": 0}); !reflect.DeepEqual(s.Weights, w) || !reflect.DeepEqual(s.LKG, w) {
		t.Errorf("weights %v, lkg %v; want %v", s.Weights, s.LKG, w)
	}
	if h := (HealthCheck{Path: "/health/ready", Interval: Duration(5 * time.Second), Timeout: Duration(2 * time.Second), Fails: 2, Passes: 2}); *s.Health != h {
		t.Errorf("health %+v, want %+v", *s.Health, h)
	}
	wantSLO := DefaultSLO
	wantSLO.Rollback.ErrorRate, wantSLO.MinRequests = 0.05, 10
	if s.SLO != wantSLO {
		t.Errorf("slo %+v, want %+v", s.SLO, wantSLO)
	}
	if s.Guard != 0 {
		t.Errorf("an explicit guard of 0 became %v", s.Guard)
	}
}

func TestNormalizeSpecErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		svc     string
		edit    func(*ServiceSpec)
		wantErr string
	}{
		{name: "bad service name", svc: "Bad", wantErr: `service name "Bad" is not valid`},
		{name: "no pools", edit: func(s *ServiceSpec) { s.Pools = nil }, wantErr: "has no pools"},
		{name: "bad pool name", edit: func(s *ServiceSpec) { s.Pools["Blue"] = PoolSpec{} }, wantErr: `pool name "Blue" is not valid`},
		{name: "bad backend", edit: func(s *ServiceSpec) { s.Pools["green"] = PoolSpec{Backends: []string{"x"}} }, wantErr: `pool "green": backend "x" is not host:port`},
		{name: "dup backend", edit: func(s *ServiceSpec) { s.Pools["green"] = PoolSpec{Backends: []string{"h:1", "h:1"}} }, wantErr: "listed twice"},
		{name: "mixed scheme", edit: func(s *ServiceSpec) { s.Pools["green"] = PoolSpec{Backends: []string{"h:1", "https://h:2"}} }, wantErr: "one scheme per pool"},
		{name: "long label", edit: func(s *ServiceSpec) { s.Pools["green"] = PoolSpec{Version: strings.Repeat("v", 129)} }, wantErr: "version label is longer"},
		{name: "label newline", edit: func(s *ServiceSpec) { s.Pools["green"] = PoolSpec{Version: "v1\n"} }, wantErr: "control character"},
		{name: "unknown weight pool", edit: func(s *ServiceSpec) { s.Weights = Weights{"purple": 10000} }, wantErr: `weights name pool "purple", which the service does not have; its pools are blue, canary, green`},
		{name: "weights sum", edit: func(s *ServiceSpec) { s.Weights = Weights{"blue": 9000} }, wantErr: "weights sum to 90, not 100"},
		{name: "health path", edit: func(s *ServiceSpec) { s.Health = &HealthCheck{Path: "health"} }, wantErr: "must start with /"},
		{name: "health no path", edit: func(s *ServiceSpec) { s.Health = &HealthCheck{} }, wantErr: "must start with /"},
		{name: "health space", edit: func(s *ServiceSpec) { s.Health = &HealthCheck{Path: "/a b"} }, wantErr: "space"},
		{name: "health interval", edit: func(s *ServiceSpec) { s.Health = &HealthCheck{Path: "/", Interval: -1} }, wantErr: "interval must be more than 0"},
		{name: "health timeout", edit: func(s *ServiceSpec) { s.Health = &HealthCheck{Path: "/", Timeout: -1} }, wantErr: "timeout must be more than 0"},
		{name: "health fails", edit: func(s *ServiceSpec) { s.Health = &HealthCheck{Path: "/", Fails: -1} }, wantErr: "fails must be at least 1"},
		{name: "health passes", edit: func(s *ServiceSpec) { s.Health = &HealthCheck{Path: "/", Passes: -2} }, wantErr: "passes must be at least 1"},
		{name: "slo rate above 1", edit: func(s *ServiceSpec) { s.SLO = &SLO{Rollback: Thresholds{ErrorRate: 1.5}} }, wantErr: "rollback error_rate 1.5 must be a fraction from 0 to 1"},
		{name: "slo rate negative", edit: func(s *ServiceSpec) { s.SLO = &SLO{Advance: Thresholds{ErrorRate: -0.1}} }, wantErr: "advance error_rate -0.1"},
		{name: "slo p95 negative", edit: func(s *ServiceSpec) { s.SLO = &SLO{Advance: Thresholds{P95ms: -5}} }, wantErr: "advance p95_ms -5 must be"},
		{name: "slo advance above rollback", edit: func(s *ServiceSpec) { s.SLO = &SLO{Advance: Thresholds{ErrorRate: 0.02}} }, wantErr: "advance error_rate 0.02 is above the rollback error_rate 0.01"},
		{name: "slo p95 advance above rollback", edit: func(s *ServiceSpec) { s.SLO = &SLO{Advance: Thresholds{P95ms: 3000}} }, wantErr: "advance p95_ms 3000 is above the rollback p95_ms 2000"},
		{name: "slo window", edit: func(s *ServiceSpec) { s.SLO = &SLO{Window: -1} }, wantErr: "window must be more than 0"},
		{name: "slo min requests", edit: func(s *ServiceSpec) { s.SLO = &SLO{MinRequests: -1} }, wantErr: "min_requests must be at least 1"},
		{name: "slo consecutive", edit: func(s *ServiceSpec) { s.SLO = &SLO{Consecutive: -3} }, wantErr: "consecutive must be at least 1"},
		{name: "guard negative", edit: func(s *ServiceSpec) { s.Guard = ptr(Duration(-1)) }, wantErr: "guard must not be negative"},
	} {
		spec := testSpec()
		if tc.edit != nil {
			tc.edit(&spec)
		}
		svc := tc.svc
		if svc == "" {
			svc = "codingbrain"
		}
		s, err := NormalizeSpec(svc, spec)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: NormalizeSpec = %v, %v; want error containing %q", tc.name, s, err, tc.wantErr)
		}
	}
}

func TestServiceSpecJSON(t *testing.T) {
	body := `{
		"pools": {
			"blue": {"version": "v1", "backends": ["10.0.0.11:8765", "10.0.0.12:8765"]},
			"green": {"backends": []}
		},
		"weights": {"blue": 99.5, "green": 0.5},
		"health": {"path": "/health/ready", "interval": "2s"},
		"slo": {"window": "1m"},
		"guard": "5m"
	}`
	var spec ServiceSpec
	if err := json.Unmarshal([]byte(body), &spec); err != nil {
		t.Fatal(err)
	}
	want := ServiceSpec{
		Pools: map[string]PoolSpec{
			"blue":  {Version: "v1", Backends: []string{"10.0.0.11:8765", "10.0.0.12:8765"}},
			"green": {Backends: []string{}},
		},
		Weights: Weights{"blue": 9950, "green": 50},
		Health:  &HealthCheck{Path: "/health/ready", Interval: Duration(2 * time.Second)},
		SLO:     &SLO{Window: Duration(time.Minute)},
		Guard:   ptr(Duration(5 * time.Minute)),
	}
	if !reflect.DeepEqual(spec, want) {
		t.Errorf("decoded\n%+v\nwant\n%+v", spec, want)
	}

	for _, tc := range []struct {
		body    string
		wantErr string
	}{
		{`{"pools": {"blue": {"backends": ["a:1"]}}, "weights": {"blue": "100"}}`, "weight must be a number"},
		{`{"pools": {"blue": {"backends": ["a:1"]}}, "guard": 10}`, "duration must be a string"},
		{`{"pools": {"blue": {"backends": ["a:1"]}}, "health": {"path": "/", "interval": "soon"}}`, `duration "soon" is not valid`},
	} {
		var s ServiceSpec
		err := json.Unmarshal([]byte(tc.body), &s)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("unmarshal %s = %v; want error containing %q", tc.body, err, tc.wantErr)
		}
	}
}

func TestCommandValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		c       Command
		wantErr string
	}{
		{name: "put", c: cmd("svc", PutService{Spec: ptr(testSpec())})},
		{name: "put without spec", c: cmd("svc", PutService{}), wantErr: "needs pools"},
		{name: "put bad spec", c: cmd("svc", PutService{Spec: &ServiceSpec{}}), wantErr: "has no pools"},
		{name: "bad name", c: cmd("a b", DeleteService{}), wantErr: "service name"},
		{name: "delete", c: cmd("svc", DeleteService{})},
		{name: "weights", c: cmd("svc", SetWeights{Weights: Weights{"blue": 10000}})},
		{name: "switch", c: cmd("svc", SetWeights{Action: SwitchWeights, Weights: Weights{"green": 10000}})},
		{name: "weights sum", c: cmd("svc", SetWeights{Weights: Weights{"blue": 100}}), wantErr: "sum to 1, not 100"},
		{name: "weights bad pool", c: cmd("svc", SetWeights{Weights: Weights{"B": 10000}}), wantErr: "pool name"},
		{name: "weights action", c: cmd("svc", SetWeights{Action: "drain", Weights: Weights{"b": 10000}}), wantErr: `weights action "drain"`},
		{name: "pool", c: cmd("svc", SetPool{Pool: "blue", Backends: []string{"h:1"}})},
		{name: "pool bad backend", c: cmd("svc", SetPool{Pool: "blue", Backends: []string{"h"}}), wantErr: "not host:port"},
		{name: "pool bad name", c: cmd("svc", SetPool{Pool: "", Backends: []string{"h:1"}}), wantErr: "pool name"},
		{name: "drain", c: cmd("svc", SetDrain{Pool: "blue", Action: DrainBackends, Backends: []string{"h:1"}})},
		{name: "drain no address", c: cmd("svc", SetDrain{Pool: "blue", Action: DrainBackends}), wantErr: "name the backend"},
		{name: "drain bad pool", c: cmd("svc", SetDrain{Pool: "B", Action: DrainBackends, Backends: []string{"h:1"}}), wantErr: "pool name"},
		{name: "drain bad address", c: cmd("svc", SetDrain{Pool: "blue", Action: UndrainBackends, Backends: []string{"h"}}), wantErr: "not host:port"},
		{name: "drain bad action", c: cmd("svc", SetDrain{Pool: "blue", Backends: []string{"h:1"}}), wantErr: "drain action"},
		{name: "weights rollback", c: cmd("svc", SetWeights{Action: "rollback", Weights: Weights{"b": 10000}}), wantErr: `weights action "rollback" is not one of weights, switch`},
		{name: "unknown kind", c: cmd("svc", unregistered{}), wantErr: "unknown command kind 0x7f"},
		{name: "no payload", c: Command{Envelope: Envelope{Service: "svc"}}, wantErr: "a command needs a payload"},
		{name: "payload by pointer", c: cmd("svc", &DeleteService{}), wantErr: "a delete_service command carries a state.DeleteService, not a *state.DeleteService"},
		{name: "long idempotency key", c: Command{Envelope: Envelope{Service: "svc", IdemKey: strings.Repeat("k", 600)}, Payload: DeleteService{}}, wantErr: "idempotency key is longer"},
	} {
		err := tc.c.Validate()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: Validate = %v, want error %q", tc.name, err, tc.wantErr)
		}
	}
}

// TestCheckSpecLimits: a definition written now must keep the limits; one an
// older build accepted (in the log or a snapshot) still normalizes and
// applies, so that every build replays it the same.
func TestCheckSpecLimits(t *testing.T) {
	health := func(edit func(*HealthCheck)) func(*ServiceSpec) {
		return func(s *ServiceSpec) {
			h := HealthCheck{Path: "/ready", Interval: Duration(2 * time.Second)}
			edit(&h)
			s.Health = &h
		}
	}
	window := func(d time.Duration) func(*ServiceSpec) {
		return func(s *ServiceSpec) { s.SLO = &SLO{Window: Duration(d)} }
	}
	for _, tc := range []struct {
		name    string
		edit    func(*ServiceSpec)
		wantErr string // "" when accepted
	}{
		{"interval 1ns", health(func(h *HealthCheck) { h.Interval = 1 }), "health check interval 1ns is out of range: use 100ms to 10m"},
		{"interval 99ms", health(func(h *HealthCheck) { h.Interval = Duration(99 * time.Millisecond) }), "interval 99ms is out of range"},
		{"interval 100ms", health(func(h *HealthCheck) { h.Interval = Duration(100 * time.Millisecond) }), ""},
		{"interval 10m", health(func(h *HealthCheck) { h.Interval = Duration(10 * time.Minute) }), ""},
		{"interval 1h", health(func(h *HealthCheck) { h.Interval = Duration(time.Hour) }), "interval 1h is out of range"},
		{"timeout 1ms", health(func(h *HealthCheck) { h.Timeout = Duration(time.Millisecond) }), "health check timeout 1ms is out of range: use 10ms to 1m"},
		{"timeout 2m", health(func(h *HealthCheck) { h.Timeout = Duration(2 * time.Minute) }), "timeout 2m is out of range"},
		{"timeout above interval", health(func(h *HealthCheck) { h.Interval, h.Timeout = Duration(300*time.Millisecond), Duration(time.Second) }), ""},
		{"fails 101", health(func(h *HealthCheck) { h.Fails = 101 }), "health check fails 101 is more than 100"},
		{"passes 1000", health(func(h *HealthCheck) { h.Passes = 1000 }), "health check passes 1000 is more than 100"},
		{"window 5m", window(5 * time.Minute), ""},
		{"window 5m1s", window(5*time.Minute + time.Second), "slo window 5m1s is out of range: use 1s to 5m"},
		{"window 1h", window(time.Hour), "slo window 1h is out of range"},
		{"window 500ms", window(500 * time.Millisecond), "slo window 500ms is out of range"},
	} {
		spec := testSpec()
		tc.edit(&spec)
		err := CheckSpec("svc", spec)
		cmdErr := cmd("svc", PutService{Spec: &spec}).Validate()
		if tc.wantErr == "" {
			if err != nil || cmdErr != nil {
				t.Errorf("%s: CheckSpec = %v, Validate = %v; want accepted", tc.name, err, cmdErr)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) || cmdErr == nil || cmdErr.Error() != err.Error() {
			t.Errorf("%s: CheckSpec = %v, Validate = %v; want %q", tc.name, err, cmdErr, tc.wantErr)
		}
		// What an older build committed still applies.
		if _, err := NormalizeSpec("svc", spec); err != nil {
			t.Errorf("%s: NormalizeSpec refuses what older builds accepted: %v", tc.name, err)
		}
		h := newHarness(t, Options{})
		if r := h.apply(put("svc", spec)); !r.OK() || !r.Changed {
			t.Errorf("%s: Apply of an entry an older build accepted = %+v", tc.name, r)
		}
	}
}

package healthcheck

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestJudge(t *testing.T) {
	tests := []struct {
		name        string
		code        int
		contentType string
		body        string
		want        Status
		wantErr     string
	}{
		{"200 text", 200, "text/plain", "ok", StatusHealthy, ""},
		{"204 empty", 204, "", "", StatusHealthy, ""},
		{"299", 299, "", "", StatusHealthy, ""},
		{"degraded JSON", 200, "application/json", `{"status":"degraded"}`, StatusDegraded, ""},
		{"degraded with charset", 200, "application/json; charset=utf-8", `{"status":"degraded","detail":{"db":"slow"}}`, StatusDegraded, ""},
		{"degraded in upper case", 200, "application/json", `{"status":"DEGRADED"}`, StatusDegraded, ""},
		{"degraded, +json type", 200, "application/health+json", `{"status":"Degraded"}`, StatusDegraded, ""},
		{"degraded without JSON type", 200, "text/plain", "\n  {\"status\":\"degraded\"}", StatusDegraded, ""},
		{"degraded, no type", 200, "", `{"status":"degraded"}`, StatusDegraded, ""},
		{"degraded 202", 202, "application/json", `{"status":"degraded"}`, StatusDegraded, ""},
		{"ok JSON", 200, "application/json", `{"status":"ok"}`, StatusHealthy, ""},
		{"unhealthy JSON with 200", 200, "application/json", `{"status":"unhealthy"}`, StatusHealthy, ""},
		{"status not a string", 200, "application/json", `{"status":1}`, StatusHealthy, ""},
		{"nested status", 200, "application/json", `{"checks":{"status":"degraded"}}`, StatusHealthy, ""},
		{"JSON array", 200, "application/json", `[{"status":"degraded"}]`, StatusHealthy, ""},
		{"invalid JSON", 200, "application/json", `{"status":"degraded"`, StatusHealthy, ""},
		{"trailing garbage", 200, "application/json", `{"status":"degraded"} x`, StatusHealthy, ""},
		{"word degraded in text", 200, "text/plain", "degraded", StatusHealthy, ""},
		{"bad content type", 200, "application/json;;;=", `{"status":"degraded"}`, StatusDegraded, ""},
		{"500", 500, "text/plain", "boom", StatusUnhealthy, "answered 500 Internal Server Error"},
		{"503 degraded body", 503, "application/json", `{"status":"degraded"}`, StatusUnhealthy, "answered 503 Service Unavailable"},
		{"301", 301, "", "", StatusUnhealthy, "answered 301 Moved Permanently"},
		{"404", 404, "", "", StatusUnhealthy, "answered 404 Not Found"},
		{"300", 300, "", "", StatusUnhealthy, "answered 300 Multiple Choices"},
		{"199", 199, "", "", StatusUnhealthy, "answered 199"},
		{"unnamed code", 599, "", "", StatusUnhealthy, "answered 599"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := judge(tt.code, tt.contentType, []byte(tt.body))
			if got != tt.want || why != tt.wantErr {
				t.Errorf("judge(%d, %q, %q) = %s, %q; want %s, %q", tt.code, tt.contentType, tt.body, got, why, tt.want, tt.wantErr)
			}
		})
	}
}

func TestProbeURL(t *testing.T) {
	for _, tt := range []struct{ address, path, want string }{
		{"10.0.0.11:8765", "/health/ready", "http://10.0.0.11:8765/health/ready"},
		{"[2001:db8::1]:8765", "/h", "http://[2001:db8::1]:8765/h"},
		{"app.internal:80", "/h?full=1", "http://app.internal:80/h?full=1"},
		{"https://10.0.0.11:8443", "/health/ready", "https://10.0.0.11:8443/health/ready"},
	} {
		if got := probeURL(tt.address, tt.path); got != tt.want {
			t.Errorf("probeURL(%q, %q) = %q, want %q", tt.address, tt.path, got, tt.want)
		}
	}
}

// FuzzHealthBody feeds arbitrary answers to judge: it must never panic,
// give degraded only for a 2xx, and say why for every failure.
func FuzzHealthBody(f *testing.F) {
	f.Add(200, "application/json", []byte(`{"status":"degraded"}`))
	f.Add(200, "text/plain", []byte(` {"STATUS":"Degraded","x":[1,2,{}]}`))
	f.Add(204, "", []byte(nil))
	f.Add(503, "application/json", []byte(`{"status":"degraded"}`))
	f.Add(200, "application/problem+json; charset=utf-8", []byte(`{"status":"ok"}`))
	f.Add(200, "application/json", []byte(`{"status":"degr\u0061ded"}`))
	f.Add(302, "text/html", []byte("<a>moved</a>"))
	f.Add(-1, ";;", []byte("{"))
	f.Fuzz(func(t *testing.T, code int, contentType string, body []byte) {
		status, why := judge(code, contentType, body)
		twoXX := code >= 200 && code <= 299
		switch status {
		case StatusHealthy, StatusDegraded:
			if !twoXX {
				t.Fatalf("judge(%d) = %s; only a 2xx may serve", code, status)
			}
			if why != "" {
				t.Fatalf("judge(%d) = %s with reason %q", code, status, why)
			}
		case StatusUnhealthy:
			if twoXX {
				t.Fatalf("judge(%d) = unhealthy; a 2xx always serves", code)
			}
			if !strings.HasPrefix(why, "answered ") {
				t.Fatalf("judge(%d) = unhealthy with reason %q", code, why)
			}
		default:
			t.Fatalf("judge(%d) = %q, not a verdict", code, status)
		}
		if status == StatusDegraded && !json.Valid(body) {
			t.Fatalf("degraded from a body that is not JSON: %q", body)
		}
	})
}

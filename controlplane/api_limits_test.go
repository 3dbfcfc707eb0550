package controlplane

import (
	"strings"
	"testing"
)

// TestServiceLimits: the admin API refuses a health check every nanosecond
// and an SLO window longer than the samples every node keeps, with a 400
// that says what to use.
func TestServiceLimits(t *testing.T) {
	n := startNode(t, t.TempDir())
	c := newClient(t, n)
	for body, want := range map[string]string{
		`{"pools":{"a":{"backends":["127.0.0.1:1"]}},"health":{"path":"/h","interval":"1ns"}}`:            "health check interval 1ns is out of range: use 100ms to 10m",
		`{"pools":{"a":{"backends":["127.0.0.1:1"]}},"health":{"path":"/h","timeout":"1h"}}`:              "health check timeout 1h is out of range: use 10ms to 1m",
		`{"pools":{"a":{"backends":["127.0.0.1:1"]}},"slo":{"window":"10m"}}`:                             "slo window 10m is out of range: use 1s to 5m",
		`{"pools":{"a":{"backends":["127.0.0.1:1"]}},"health":{"path":"/h","interval":"2s","fails":500}}`: "health check fails 500 is more than 100",
	} {
		code, _, out := c.do("PUT", "/v1/services/svc", body)
		if msg, _ := out["error"].(string); code != 400 || out["code"] != "invalid" || !strings.Contains(msg, want) {
			t.Errorf("PUT %s: %d %v; want 400 containing %q", body, code, out, want)
		}
	}
	if n.View().Services["svc"] != nil {
		t.Fatal("a refused definition was applied")
	}
}

package controlplane

import (
	"encoding/json"
	"testing"
)

// loadPlane reports fixed loads for every backend: the data plane's own
// figures are tested in proxymod and end to end.
type loadPlane struct {
	idlePlane
	inFlight, longLived int64
}

func (p loadPlane) InFlight(string, string, string) int64  { return p.inFlight }
func (p loadPlane) LongLived(string, string, string) int64 { return p.longLived }

// TestBackendLoad: the service body and /health/deps show each backend's
// requests in flight and long-lived connections apart, and a service body
// as GET returns it can be PUT back.
func TestBackendLoad(t *testing.T) {
	n := startNode(t, t.TempDir())
	n.SetDataPlane(loadPlane{inFlight: 2, longLived: 3})
	c := newClient(t, n)
	if code, _, body := c.do("PUT", "/v1/services/demo", demoService); code != 200 {
		t.Fatalf("put: %d %v", code, body)
	}
	code, _, body := c.do("GET", "/v1/services/demo", "")
	if code != 200 {
		t.Fatalf("get: %d %v", code, body)
	}
	for pool, p := range body["pools"].(map[string]any) {
		for _, b := range p.(map[string]any)["backends"].([]any) {
			be := b.(map[string]any)
			if be["in_flight"] != 2.0 || be["long_lived"] != 3.0 {
				t.Errorf("pool %s backend %v: want in_flight 2, long_lived 3", pool, be)
			}
		}
	}
	raw, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	if code, _, back := c.do("PUT", "/v1/services/demo", string(raw)); code != 200 {
		t.Fatalf("PUT of the GET body: %d %v", code, back)
	}

	_, _, deps := c.do("GET", "/health/deps", "")
	d, ok := deps["dependencies"].(map[string]any)["demo/blue/127.0.0.1:9001"].(map[string]any)
	if !ok || d["in_flight"] != 2.0 || d["long_lived"] != 3.0 {
		t.Errorf("/health/deps entry of blue: %v; want in_flight 2, long_lived 3", d)
	}
}

package controlplane

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestNotifyLostEventsAreSaid: events that leave the trail before a
// notifier sends them (its receiver hung while the trail turned over)
// cannot be resent; the worker skips them, says so in the notifier's
// last_error and counts them lost, and sends what the trail still holds.
func TestNotifyLostEventsAreSaid(t *testing.T) {
	release := make(chan struct{})
	hung := newReceiver(t, func(_ int, r *http.Request, _ http.ResponseWriter) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	n := startNodeTuned(t, t.TempDir(), func(c *Config) {
		c.raft.MaxEvents = 8
		c.notify.Retry = fastRetry
	})
	cl := newClient(t, n)
	if code, _, b := cl.do("PUT", "/v1/services/svc", demoService); code != 200 {
		t.Fatalf("put: %d %v", code, b)
	}
	if code, _, b := cl.do("PUT", "/v1/notifiers/slow", `{"url":"`+hung.url+`","timeout":"1m"}`); code != 200 {
		t.Fatalf("put notifier: %d %v", code, b)
	}
	rollout := func() {
		t.Helper()
		for _, step := range [][2]string{
			{"/v1/services/svc/rollout", `{"to":"canary","steps":[{"weight":10,"hold":"1h"},{"weight":100}],"force":true}`},
			{"/v1/services/svc/rollout/abort", ``},
		} {
			if code, _, b := cl.do("POST", step[0], step[1]); code != 200 {
				t.Fatalf("POST %s: %d %v", step[0], code, b)
			}
		}
	}
	rollout()
	hung.waitFor(30*time.Second, "the first notification", func(got []received) bool { return len(got) > 0 })
	// While it hangs, the 8-event trail turns over.
	for range 8 {
		rollout()
	}
	close(release)
	last := trail(n, "svc", 0, 1)[0].Index
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, b := cl.do("GET", "/v1/notifiers/slow", "")
		d, _ := b["delivery"].(map[string]any)
		if msg, _ := d["last_error"].(string); strings.Contains(msg, "left the event trail") && d["through"].(float64) >= float64(last) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lost events not said: %v", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + n.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m strings.Builder
	buf := make([]byte, 1<<16)
	for {
		k, err := resp.Body.Read(buf)
		m.Write(buf[:k])
		if err != nil {
			break
		}
	}
	if !strings.Contains(m.String(), `cbproxy_notifications_total{notifier="slow",outcome="lost"} 1`) {
		t.Fatal("the lost events are not counted")
	}
	// What the trail still held was sent after the gap, in order.
	got := hung.requests()
	if k := kinds(got); len(k) < 3 || k[len(k)-1] != "rollout_aborted" {
		t.Fatalf("after the gap: %v", k)
	}
}

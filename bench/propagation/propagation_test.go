package main

import (
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		var out []time.Duration
		for _, v := range vs {
			out = append(out, time.Duration(v)*time.Millisecond)
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 0.99, 0},
		{"one value", ms(7), 0.5, 7 * time.Millisecond},
		{"median of odd", ms(1, 2, 3), 0.5, 2 * time.Millisecond},
		{"median of even takes the lower", ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
		{"max", ms(1, 2, 3, 4), 1, 4 * time.Millisecond},
		{"p99 of 100", hundred, 0.99, 99 * time.Millisecond},
		{"p90 of 100", hundred, 0.9, 90 * time.Millisecond},
		{"p99 of 4 is the max", ms(1, 2, 3, 40), 0.99, 40 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
}

func TestCheckAnswer(t *testing.T) {
	ids := []string{"node1", "node2", "node3"}
	tests := []struct {
		name   string
		status int
		body   string
		want   string // part of the problem; "" for none
	}{
		{"all applied", 200, `{"weights":{"blue":0,"canary":100},"applied_on":["node3","node1","node2"],"not_applied":[]}`, ""},
		{"one not applied", 200, `{"weights":{"blue":0,"canary":100},"applied_on":["node1","node2"],"not_applied":["node3"]}`, "not_applied [node3]"},
		{"applied_on missing", 200, `{"weights":{"blue":0,"canary":100}}`, "applied_on []"},
		{"a node twice", 200, `{"weights":{"canary":100},"applied_on":["node1","node1","node2"]}`, "applied_on [node1 node1 node2]"},
		{"wrong weights", 200, `{"weights":{"blue":100,"canary":0},"applied_on":["node1","node2","node3"]}`, "want canary at 100"},
		{"error answer", 409, `{"error":"a rollout is running","code":"rollout_running"}`, "status 409: a rollout is running"},
		{"not JSON, error status", 502, `bad gateway`, "status 502: bad gateway"},
		{"not JSON, 200", 200, `<html>`, "not JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := checkAnswer(tt.status, []byte(tt.body), "canary", ids)
			if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
				t.Errorf("checkAnswer = %q, want %q", got, tt.want)
			}
		})
	}
	// A single node's plain PUT answers no applied_on.
	if got := checkAnswer(200, []byte(`{"weights":{"blue":0,"canary":100}}`), "canary", nil); got != "" {
		t.Errorf("checkAnswer of a plain PUT = %q, want none", got)
	}
	if got := checkAnswer(200, []byte(`{"weights":{"blue":100,"canary":0}}`), "canary", nil); !strings.Contains(got, "want canary at 100") {
		t.Errorf("checkAnswer of a plain PUT with the old weights = %q", got)
	}
}

func TestProcCPU(t *testing.T) {
	// A command name with a space and a ')' must not shift the fields;
	// utime 250 and stime 50 ticks are 3 s.
	stat := "4242 (cb proxy) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 123 456 789"
	got, err := procCPU(stat)
	if err != nil || got != 3*time.Second {
		t.Errorf("procCPU = %v, %v; want 3s", got, err)
	}
	for _, bad := range []string{"4242 no name", "4242 (x) S 1 2", "4242 (x) S 1 2 3 4 5 6 7 8 9 10 ten 12"} {
		if _, err := procCPU(bad); err == nil {
			t.Errorf("procCPU(%q) = no error", bad)
		}
	}
}

func TestSummarizeLoad(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	changes := []change{
		{target: "canary", start: at(100), end: at(120)},
		{target: "blue", start: at(200), end: at(220)},
	}
	records := []record{
		{node: 0, sent: at(105), recv: at(106), pool: "blue"},                // before the call returned: allowed
		{node: 1, sent: at(121), recv: at(122), pool: "canary"},              // switched
		{node: 2, sent: at(125), recv: at(126), pool: "blue"},                // stale
		{node: 0, sent: at(199), recv: at(203), pool: "blue"},                // answered after the next change started
		{node: 1, sent: at(230), recv: at(231), pool: "canary"},              // stale for the second change
		{node: 2, sent: at(240), recv: at(241), fail: "status 502"},          // failed
		{node: 0, sent: at(250), recv: at(251), fail: "status 502"},          // failed
		{node: 1, sent: at(260), recv: at(261), fail: `Get "http://x": EOF`}, // failed
	}
	ls := summarizeLoad(changes, loadResult{records: records, unsent: 3, duration: time.Second})
	if ls.requests != 8 || ls.failed != 3 || ls.unsent != 3 {
		t.Errorf("requests %d, failed %d, unsent %d; want 8, 3, 3", ls.requests, ls.failed, ls.unsent)
	}
	if ls.staleAnswers != 2 {
		t.Errorf("staleAnswers = %d, want 2", ls.staleAnswers)
	}
	wantStale := []string{
		"change 1 (to canary): node3 answered from blue a request sent 5.0 ms after the call returned",
		"change 2 (to blue): node2 answered from canary a request sent 10.0 ms after the call returned",
	}
	if strings.Join(ls.staleSamples, "|") != strings.Join(wantStale, "|") {
		t.Errorf("staleSamples = %q, want %q", ls.staleSamples, wantStale)
	}
	got := topFailures(ls.failures, 5)
	want := []string{"2 × status 502", `1 × Get "http://x": EOF`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("topFailures = %q, want %q", got, want)
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string // part of the error; "" for none
	}{
		{nil, ""},
		{[]string{"-changes", "10", "-gap", "0s", "-rate", "0"}, ""},
		{[]string{"-changes", "0"}, "at least 1"},
		{[]string{"-nodes", "1", "-idle", "0s"}, ""},
		{[]string{"-nodes", "2"}, "-nodes 2"},
		{[]string{"-idle", "-1s"}, "-idle"},
		{[]string{"-warmup", "3"}, "even number"},
		{[]string{"-rate", "-1"}, "-rate -1"},
		{[]string{"-port-base", "80"}, "-port-base 80"},
		{[]string{"-port-base", "65500"}, "-port-base 65500"},
		{[]string{"-gap", "-1s"}, "-gap"},
		{[]string{"extra"}, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := parseFlags(tt.args)
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("parseFlags(%q) = %v, want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}

package adminapi

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// FuzzPutNotifierBody: whatever body comes in, the parser never panics; a
// body it accepts makes a notifier the state machine accepts, whose
// rendering never shows the secret, and which survives a JSON round trip.
func FuzzPutNotifierBody(f *testing.F) {
	for _, seed := range []string{
		`{"url":"https://hooks.example/T1/x?token=t","secret":"s3cret","events":["rollout_started","guard_breach"],"format":"slack","timeout":"2s","service":"shop"}`,
		`{"url":"http://127.0.0.1:9000/hook","if_version":0}`,
		`{"url":"http://[::1]:80/","secret":""}`,
		`{"url":"ftp://x/"}`,
		`{"url":"http://x/","events":["nope"]}`,
		`{"url":"http://u:p@x/"}`,
		`{"url":"http://x/","timeout":"1ns"}`,
		`{"url":"http://x/","extra":true}`,
		`{}`, `[]`, `{"url":"http://x/"} {}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := ParsePutNotifierBody(raw)
		if err != nil {
			return
		}
		spec := state.NotifierSpec{URL: b.URL, Service: b.Service, Events: b.Events, Format: b.Format, Timeout: b.Timeout}
		if b.Secret != nil {
			spec.Secret = *b.Secret
		}
		cmd := state.NewCommand("", "fuzz", state.PutNotifier{Notifier: "n", Spec: &spec})
		if err := cmd.Validate(); err != nil {
			t.Fatalf("accepted body %s makes a command the state machine refuses: %v", raw, err)
		}
		entry, err := state.Encode(cmd)
		if err != nil {
			t.Fatal(err)
		}
		back, err := state.Decode(entry)
		if err != nil || back.Validate() != nil {
			t.Fatalf("accepted body %s does not survive the log: %v", raw, err)
		}
		// GET shows the same whatever the secret is (only that one is set).
		n := &state.Notifier{Name: "n", NotifierSpec: state.NormalizeNotifierSpec(spec)}
		shown, _ := json.Marshal(renderNotifier(n))
		other := *n
		other.Secret = spec.Secret + "-other"
		shownOther, _ := json.Marshal(renderNotifier(&other))
		if spec.Secret != "" && string(shown) != string(shownOther) {
			t.Fatalf("GET shows the secret: %s", shown)
		}
		if strings.Contains(string(shown), "?") {
			t.Fatalf("GET shows the URL's query: %s", shown)
		}
	})
}

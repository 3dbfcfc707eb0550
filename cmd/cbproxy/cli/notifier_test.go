package cli

import (
	"net/http/httptest"
	"strings"
	"testing"
)

const notifierJSON = `{"name":"pager","version":42,"url":"https://hooks.example/…","service":"demo","events":["guard_breach"],"format":"json","timeout":"5s","secret_set":true,
 "delivery":{"through":57,"sent":12,"failed":1,"last_error":"event 51 (guard_breach): receiver answered 404 Not Found"}}`

// TestNotifierCommands: what the notifier commands send, and print; the
// secret comes from the environment, never the command line.
func TestNotifierCommands(t *testing.T) {
	tests := []struct {
		name     string
		argv     []string
		env      map[string]string
		routes   map[string][]answer
		want     string
		wantBody string
		ifMatch  string
		code     int
		stdout   string
	}{
		{
			name:   "set with every flag",
			argv:   []string{"set", "pager", "https://hooks.example/x", "--events", "guard_breach,node_lost", "--service", "demo", "--format", "slack", "--timeout", "3s", "--secret-env", "HOOK_SECRET", "--if-version", "0"},
			env:    map[string]string{"HOOK_SECRET": "s3cret"},
			routes: map[string][]answer{"PUT /v1/notifiers/pager": ok(notifierJSON)},
			want:   "PUT /v1/notifiers/pager", ifMatch: "0",
			wantBody: `{"events":["guard_breach","node_lost"],"format":"slack","secret":"s3cret","service":"demo","timeout":"3s","url":"https://hooks.example/x"}`,
			stdout:   "notifier pager version 42: https://hooks.example/…, format json, signed yes\n",
		},
		{
			name:     "set keeps the secret without --secret-env",
			argv:     []string{"set", "pager", "http://127.0.0.1:9/h"},
			routes:   map[string][]answer{"PUT /v1/notifiers/pager": ok(notifierJSON)},
			want:     "PUT /v1/notifiers/pager",
			wantBody: `{"url":"http://127.0.0.1:9/h"}`,
		},
		{
			name: "set with an empty secret variable", argv: []string{"set", "pager", "http://x/", "--secret-env", "NOPE"},
			code: exitUsage,
		},
		{
			name:   "list",
			argv:   []string{"list"},
			routes: map[string][]answer{"GET /v1/notifiers": ok(`{"notifiers":[` + notifierJSON + `]}`)},
			want:   "GET /v1/notifiers",
			stdout: "pager  42       https://hooks.example/…  demo     guard_breach  json    yes     57       12    1       event 51 (guard_breach): receiver answered 404 Not Found\n",
		},
		{
			name:   "delete",
			argv:   []string{"delete", "pager"},
			routes: map[string][]answer{"DELETE /v1/notifiers/pager": ok(`{"name":"pager","deleted":true,"version":60}`)},
			want:   "DELETE /v1/notifiers/pager",
			stdout: "notifier pager deleted (version 60)\n",
		},
		{
			name:   "test that fails",
			argv:   []string{"test", "pager"},
			routes: map[string][]answer{"POST /v1/notifiers/pager/test": {{status: 502, body: `{"delivered":false,"error":"receiver answered 500","code":"notify_failed"}`}}},
			want:   "POST /v1/notifiers/pager/test",
			code:   exitFailed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := &fakeAPI{t: t, routes: tt.routes}
			srv := httptest.NewServer(api)
			defer srv.Close()
			code, stdout, stderr := runAgainst(t, srv.URL, tt.env, "notifier", tt.argv...)
			if code != tt.code {
				t.Fatalf("exit code %d, want %d; stderr %q", code, tt.code, stderr)
			}
			if !strings.Contains(stdout, tt.stdout) {
				t.Errorf("stdout %q lacks %q", stdout, tt.stdout)
			}
			if strings.Contains(stdout+stderr, "s3cret") {
				t.Errorf("the secret was printed")
			}
			reqs := api.requests()
			if tt.want == "" {
				if len(reqs) != 0 {
					t.Fatalf("requests sent: %v", reqs)
				}
				return
			}
			if len(reqs) == 0 || reqs[0].method+" "+reqs[0].path != tt.want {
				t.Fatalf("requests %v, want %s", reqs, tt.want)
			}
			if tt.wantBody != "" && reqs[0].body != tt.wantBody {
				t.Errorf("body %s, want %s", reqs[0].body, tt.wantBody)
			}
			if got := reqs[0].header.Get("If-Match"); got != tt.ifMatch {
				t.Errorf("If-Match %q, want %q", got, tt.ifMatch)
			}
		})
	}
}

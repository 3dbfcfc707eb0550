package proxymod

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// dispenser tokenizes input; a lexer error is returned, not fatal.
func dispenser(input string) (*caddyfile.Dispenser, error) {
	tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
	if err != nil {
		return nil, err
	}
	return caddyfile.NewDispenser(tokens), nil
}

// jsonEqual compares v's JSON with want's, ignoring formatting and order.
func jsonEqual(t *testing.T, v any, want string) {
	t.Helper()
	got, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad want JSON: %v", err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// contractHandlerJSON is the cbproxy handler of the contract example
// (contractCaddyfile) as JSON, without its braces.
const contractHandlerJSON = `"service":"codingbrain",
	"pools":{"blue":{"backends":["10.0.0.11:8765","10.0.0.12:8765"]},"green":{"backends":["10.0.0.21:8765"]},"canary":{"backends":["10.0.0.31:8765"]}},
	"weights":{"blue":100},
	"sticky":{"mode":"cookie"},
	"override_header":{"name":"X-Cbproxy-Pool"},
	"expose_pool":true,
	"lb_policy":{"policy":"round_robin"},
	"health":{"path":"/health/ready","interval":"2s","timeout":"2s","fails":2,"passes":2},
	"guard":"10m",
	"slo":` + defaultSLOJSON

const defaultSLOJSON = `{"advance":{"error_rate":0.001,"p95_ms":500},"rollback":{"error_rate":0.01,"p95_ms":2000},"window":"30s","min_requests":100,"consecutive":3}`

// directiveExamples are cbproxy directives the parser accepts, with the
// handler JSON they give. TestUnmarshalDirective checks them, and they
// seed FuzzCaddyfileDirective.
var directiveExamples = []struct {
	name, input, want string
}{
	{"reference only", `cbproxy codingbrain`, `{"service":"codingbrain"}`},
	{"empty block", "cbproxy codingbrain {\n}", `{"service":"codingbrain"}`},
	{"contract example", `cbproxy codingbrain {
			pool blue   10.0.0.11:8765 10.0.0.12:8765
			pool green  10.0.0.21:8765
			pool canary 10.0.0.31:8765
			weights blue=100
			sticky  cookie
			override_header X-Cbproxy-Pool
			expose_pool
			lb_policy round_robin
			health  /health/ready 2s
			guard   10m
			slo {
				advance  error_rate<0.1% p95<500ms
				rollback error_rate>1%   p95>2s
				window       30s
				min_requests 100
				consecutive  3
			}
		}`, `{` + contractHandlerJSON + `}`},
	{"pool version, empty pool, decimals", `cbproxy svc {
			pool blue 10.0.0.1:80 {
				version v1.4.1
			}
			pool green
			pool canary https://[2001:db8::1]:443 {
				version "v1.5.0 rc1"
			}
			weights blue=99.5 canary=0.5
		}`, `{"service":"svc",
			"pools":{"blue":{"version":"v1.4.1","backends":["10.0.0.1:80"]},"green":{"backends":[]},"canary":{"version":"v1.5.0 rc1","backends":["https://[2001:db8::1]:443"]}},
			"weights":{"blue":99.5,"canary":0.5}}`},
	{"sticky cookie with name and age", "cbproxy svc {\nsticky cookie sid 1h\n}", `{"service":"svc","sticky":{"mode":"cookie","name":"sid","max_age":3600000000000}}`},
	{"sticky header", "cbproxy svc {\nsticky header X-User-Id\n}", `{"service":"svc","sticky":{"mode":"header","name":"X-User-Id"}}`},
	{"override with secret", "cbproxy svc {\noverride_header X-Pool secret {env.SECRET}\n}", `{"service":"svc","override_header":{"name":"X-Pool","secret":"{env.SECRET}"}}`},
	{"lb_policy with options", "cbproxy svc {\nlb_policy header X-Tenant\n}", `{"service":"svc","lb_policy":{"policy":"header","field":"X-Tenant"}}`},
	{"health options", "cbproxy svc {\npool a 10.0.0.1:80\nhealth /ready 5s timeout 1s fails 3 passes 4\n}",
		`{"service":"svc","pools":{"a":{"backends":["10.0.0.1:80"]}},"health":{"path":"/ready","interval":"5s","timeout":"1s","fails":3,"passes":4}}`},
	{"upstream timeouts", "cbproxy svc {\ndial_timeout 1s\nresponse_header_timeout 2m\n}", `{"service":"svc","dial_timeout":1000000000,"response_header_timeout":120000000000}`},
	{"latency_histogram", "cbproxy svc {\nlatency_histogram\n}", `{"service":"svc","latency_histogram":true}`},
	{"backend_metrics", "cbproxy svc {\nbackend_metrics\n}", `{"service":"svc","backend_metrics":true}`},
	{"stream_close_delay", "cbproxy svc {\nstream_close_delay 30s\n}", `{"service":"svc","stream_close_delay":30000000000}`},
	{"fast_path off", "cbproxy svc {\nfast_path off\n}", `{"service":"svc","fast_path":false}`},
	{"fast_path on", "cbproxy svc {\nfast_path on\n}", `{"service":"svc","fast_path":true}`},
	{"stream_close_delay with rollback", "cbproxy svc {\nstream_close_delay 2m rollback 0s\n}",
		`{"service":"svc","stream_close_delay":120000000000,"stream_close_delay_rollback":0}`},
	{"partial slo keeps defaults", "cbproxy svc {\npool a 10.0.0.1:80\nslo {\nrollback p95>3s\nconsecutive 5\n}\n}",
		`{"service":"svc","pools":{"a":{"backends":["10.0.0.1:80"]}},"slo":{"advance":{"error_rate":0.001,"p95_ms":500},"rollback":{"error_rate":0.01,"p95_ms":3000},"window":"30s","min_requests":100,"consecutive":5}}`},
}

func TestUnmarshalDirective(t *testing.T) {
	for _, tt := range directiveExamples {
		t.Run(tt.name, func(t *testing.T) {
			d, err := dispenser(tt.input)
			if err != nil {
				t.Fatal(err)
			}
			h := new(Handler)
			if err := h.UnmarshalCaddyfile(d); err != nil {
				t.Fatal(err)
			}
			jsonEqual(t, h, tt.want)
		})
	}
}

// directiveRefusals are cbproxy directives the parser refuses, with what
// the error must say. TestUnmarshalDirectiveErrors checks them, and they
// seed FuzzCaddyfileDirective: each is a way into an error path.
var directiveRefusals = []struct{ input, want string }{
	{`cbproxy`, "service name is missing"},
	{`cbproxy Bad_Name`, "service name \"Bad_Name\" is not valid"},
	{`cbproxy svc extra`, `"extra" after the service name`},
	{"cbproxy svc {\nfrobnicate\n}", `unknown subdirective "frobnicate"`},
	{"cbproxy svc {\nnotify pager\n}", "notify <name> <url>"},
	{"cbproxy svc {\nnotify Pager http://x/\n}", `notifier name "Pager" is not valid`},
	{"cbproxy svc {\nnotify pager ftp://x/\n}", "must start with http:// or https://"},
	{"cbproxy svc {\nnotify pager http://x/ {\nevents everything\n}\n}", `notifier event "everything" is not one of`},
	{"cbproxy svc {\nnotify pager http://x/ {\nformat xml\n}\n}", `notifier format "xml" is not json or slack`},
	{"cbproxy svc {\nnotify pager http://x/ {\ncolour red\n}\n}", `unknown setting "colour"`},
	{"cbproxy svc {\nresponse_header_timeout 0s\n}", "response_header_timeout must be above 0"},
	{"cbproxy svc {\ndial_timeout soon\n}", `dial_timeout: "soon" is not a duration`},
	{"cbproxy svc {\ndial_timeout 1s 2s\n}", "dial_timeout <duration> is expected"},
	{"cbproxy svc {\nfast_path maybe\n}", `fast_path takes on or off, not "maybe"`},
	{"cbproxy svc {\nfast_path\n}", "fast_path on|off is expected"},
	{"cbproxy svc {\npool\n}", "pool <name> <backend...>"},
	{"cbproxy svc {\npool Blue 10.0.0.1:80\n}", `pool name "Blue" is not valid`},
	{"cbproxy svc {\npool blue 10.0.0.1\n}", "is not host:port"},
	{"cbproxy svc {\npool blue 10.0.0.1:80 https://10.0.0.2:443\n}", "mix https:// and plain HTTP"},
	{"cbproxy svc {\npool blue 10.0.0.1:80\npool blue 10.0.0.2:80\n}", "pool blue is defined twice"},
	{"cbproxy svc {\npool blue 10.0.0.1:80 {\ncolour red\n}\n}", `unknown option "colour"; expected version`},
	{"cbproxy svc {\npool blue 10.0.0.1:80 {\nversion\n}\n}", "version <label>"},
	{"cbproxy svc {\nweights\n}", "weights <pool>=<percent>"},
	{"cbproxy svc {\npool blue 10.0.0.1:80\nweights blue\n}", `"blue" is not <pool>=<percent>`},
	{"cbproxy svc {\npool blue 10.0.0.1:80\nweights blue=99.123\n}", "more than two decimals"},
	{"cbproxy svc {\npool blue 10.0.0.1:80\nweights blue=-1\n}", "negative"},
	{"cbproxy svc {\npool blue 10.0.0.1:80\nweights blue=50 blue=50\n}", "pool blue is given twice"},
	{"cbproxy svc {\npool blue 10.0.0.1:80\nweights blue=99\n}", "sum to 99, not 100"},
	{"cbproxy svc {\npool blue 10.0.0.1:80\nweights red=100\n}", `pool "red"`},
	{"cbproxy svc {\npool blue 10.0.0.1:80\nweights blue=100\nweights blue=100\n}", "weights is given twice"},
	{"cbproxy svc {\nweights blue=100\n}", "has no pools"},
	{"cbproxy svc {\nsticky\n}", "sticky cookie"},
	{"cbproxy svc {\nsticky session\n}", "expected sticky cookie"},
	{"cbproxy svc {\nsticky header\n}", "expected sticky cookie"},
	{"cbproxy svc {\nsticky cookie sid forever\n}", `max_age "forever"`},
	{"cbproxy svc {\noverride_header\n}", "override_header <name> [secret <secret>]"},
	{"cbproxy svc {\noverride_header X-Pool password s\n}", "expected override_header"},
	{"cbproxy svc {\nexpose_pool yes\n}", "expose_pool (no arguments)"},
	{"cbproxy svc {\nlatency_histogram on\n}", "latency_histogram (no arguments)"},
	{"cbproxy svc {\nlatency_histogram\nlatency_histogram\n}", "latency_histogram is given twice"},
	{"cbproxy svc {\nbackend_metrics on\n}", "backend_metrics (no arguments)"},
	{"cbproxy svc {\nbackend_metrics\nbackend_metrics\n}", "backend_metrics is given twice"},
	{"cbproxy svc {\nlb_policy\n}", "lb_policy needs a policy name"},
	{"cbproxy svc {\nlb_policy fastest\n}", "lb_policy fastest"},
	{"cbproxy svc {\nhealth /ready\n}", "health <path> <interval>"},
	{"cbproxy svc {\nhealth ready 2s\n}", "must start with /"},
	{"cbproxy svc {\nhealth /ready often\n}", `health interval: "often" is not a duration`},
	{"cbproxy svc {\nhealth /ready 2s timeout\n}", `option "timeout" has no value`},
	{"cbproxy svc {\nhealth /ready 2s fails 0\n}", `health fails: "0" is not a whole number`},
	{"cbproxy svc {\nhealth /ready 2s retries 3\n}", `unknown option "retries"`},
	{"cbproxy svc {\nguard\n}", "guard <duration>"},
	{"cbproxy svc {\nguard -1m\n}", `guard: "-1m" is not a duration`},
	{"cbproxy svc {\nstream_close_delay\n}", "stream_close_delay <duration> [rollback <duration>]"},
	{"cbproxy svc {\nstream_close_delay soon\n}", `stream_close_delay: "soon" is not a duration`},
	{"cbproxy svc {\nstream_close_delay -1s\n}", `stream_close_delay: "-1s" is not a duration`},
	{"cbproxy svc {\nstream_close_delay 1m later 5s\n}", "expected stream_close_delay <duration> [rollback <duration>]"},
	{"cbproxy svc {\nstream_close_delay 1m rollback\n}", "expected stream_close_delay <duration> [rollback <duration>]"},
	{"cbproxy svc {\nstream_close_delay 1m rollback -5s\n}", `stream_close_delay rollback: "-5s" is not a duration`},
	{"cbproxy svc {\nslo fast\n}", `slo takes a block, not "fast"`},
	{"cbproxy svc {\nslo {\nadvance error_rate>1%\n}\n}", "compares with >; this line takes error_rate<"},
	{"cbproxy svc {\nslo {\nrollback p95<2s\n}\n}", "compares with <; this line takes p95>"},
	{"cbproxy svc {\nslo {\nadvance error_rate<0.1\n}\n}", "is not a percentage"},
	{"cbproxy svc {\nslo {\nadvance error_rate<200%\n}\n}", "is not a percentage"},
	{"cbproxy svc {\nslo {\nadvance p95<soon\n}\n}", `p95 "soon" is not a duration`},
	{"cbproxy svc {\nslo {\nadvance latency<1s\n}\n}", `unknown measure "latency"`},
	{"cbproxy svc {\nslo {\nadvance fast\n}\n}", "is not a condition"},
	{"cbproxy svc {\nslo {\nadvance p95<1s p95<2s\n}\n}", "p95 is given twice"},
	{"cbproxy svc {\nslo {\nwindow\n}\n}", "window <duration>"},
	{"cbproxy svc {\nslo {\nmin_requests many\n}\n}", `min_requests: "many" is not a whole number`},
	{"cbproxy svc {\nslo {\npatience 3\n}\n}", `unknown option "patience"`},
	{"cbproxy svc {\npool a 10.0.0.1:80\nslo {\nadvance error_rate<5%\n}\n}", "above the rollback error_rate"},
	{"cbproxy svc {\npool a 10.0.0.1:80\nhealth /ready 1ns\n}", "health check interval 1ns is out of range: use 100ms to 10m"},
	{"cbproxy svc {\npool a 10.0.0.1:80\nhealth /ready 2s timeout 2h\n}", "health check timeout 2h is out of range: use 10ms to 1m"},
	{"cbproxy svc {\npool a 10.0.0.1:80\nhealth /ready 2s fails 1000\n}", "health check fails 1000 is more than 100"},
	{"cbproxy svc {\npool a 10.0.0.1:80\nslo {\nwindow 10m\n}\n}", "slo window 10m is out of range: use 1s to 5m"},
}

func TestUnmarshalDirectiveErrors(t *testing.T) {
	for _, tt := range directiveRefusals {
		t.Run(tt.input, func(t *testing.T) {
			d, err := dispenser(tt.input)
			if err != nil {
				t.Fatal(err)
			}
			err = new(Handler).UnmarshalCaddyfile(d)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "cbproxy") || !strings.Contains(err.Error(), "Caddyfile:") {
				t.Errorf("error %q must name the directive and the line", err)
			}
		})
	}
}

func TestUnmarshalGlobalOption(t *testing.T) {
	d, err := dispenser(`cbproxy {
		node_id          node1
		data_dir         /var/lib/cbproxy
		cluster_listen   127.0.0.1:7001
		admin_listen     127.0.0.1:7101
		admin_tls        /etc/cbproxy/admin.crt /etc/cbproxy/admin.key
		bootstrap_expect 3
		join             127.0.0.1:7102 127.0.0.1:7103
		join             127.0.0.1:7104
		token            ops    {env.CBPROXY_OPS_TOKEN}    operate
		token            viewer {env.CBPROXY_VIEW_TOKEN}   read
		cluster_secret   {env.CBPROXY_CLUSTER_SECRET}
		cluster_tls      cert.pem key.pem ca.pem
	}`)
	if err != nil {
		t.Fatal(err)
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	jsonEqual(t, app, `{"node_id":"node1","data_dir":"/var/lib/cbproxy","cluster_listen":"127.0.0.1:7001","admin_listen":"127.0.0.1:7101",
		"admin_tls":{"cert":"/etc/cbproxy/admin.crt","key":"/etc/cbproxy/admin.key"},"bootstrap_expect":3,
		"join":["127.0.0.1:7102","127.0.0.1:7103","127.0.0.1:7104"],
		"tokens":[{"name":"ops","secret":"{env.CBPROXY_OPS_TOKEN}","role":"operate"},{"name":"viewer","secret":"{env.CBPROXY_VIEW_TOKEN}","role":"read"}],
		"cluster_secret":"{env.CBPROXY_CLUSTER_SECRET}","cluster_tls":{"cert":"cert.pem","key":"key.pem","ca":"ca.pem"}}`)

	d, _ = dispenser("cbproxy {\nbootstrap\n}")
	app = new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil || !app.Bootstrap {
		t.Fatalf("bootstrap: %v, %+v", err, app)
	}
}

// globalOptionRefusals are cbproxy global options the parser refuses, with
// what the error must say. TestUnmarshalGlobalOptionErrors checks them, and
// they seed FuzzCaddyfileGlobalOption.
var globalOptionRefusals = []struct{ input, want string }{
	{"cbproxy on", "takes no arguments"},
	{"cbproxy {\nnode_id\n}", "node_id <value>"},
	{"cbproxy {\nnotify ops https://user:pw@x/\n}", "must not carry a user or password"},
	{"cbproxy {\nnotify ops http://x/ {\ntimeout 1h\n}\n}", "not within 100ms and 1m"},
	{"cbproxy {\nnode_id a b\n}", "node_id <value>"},
	{"cbproxy {\nnode_id a\nnode_id b\n}", "node_id is given twice"},
	{"cbproxy {\nadmin_tls cert.pem\n}", "admin_tls <cert_file> <key_file>"},
	{"cbproxy {\nbootstrap yes\n}", "bootstrap (no arguments)"},
	{"cbproxy {\nbootstrap_expect three\n}", "a number of nodes"},
	{"cbproxy {\nbootstrap_expect 0\n}", "a number of nodes"},
	{"cbproxy {\njoin\n}", "join <admin_address...>"},
	{"cbproxy {\ntoken ops secret\n}", "token <name> <secret> read|operate|admin"},
	{"cbproxy {\ntoken ops secret root\n}", `unknown role "root"`},
	{"cbproxy {\ncluster_tls a b\n}", "cluster_tls <cert_file> <key_file> <ca_file>"},
	{"cbproxy {\nraft_bind :7001\n}", `unknown option "raft_bind"`},
}

func TestUnmarshalGlobalOptionErrors(t *testing.T) {
	for _, tt := range globalOptionRefusals {
		t.Run(tt.input, func(t *testing.T) {
			d, err := dispenser(tt.input)
			if err != nil {
				t.Fatal(err)
			}
			err = new(App).UnmarshalCaddyfile(d)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "cbproxy") {
				t.Fatalf("error %v, want it to name cbproxy and contain %q", err, tt.want)
			}
		})
	}
}

// contractCaddyfile is a full Caddyfile in the shape docs/caddyfile.md
// documents: most subdirectives of the global option and of the directive,
// in columns as people align them.
const contractCaddyfile = `{
	cbproxy {
		node_id          node1                 # default: a persisted random id
		data_dir         /var/lib/cbproxy      # default: Caddy's app data dir + /cbproxy
		cluster_listen   127.0.0.1:7001        # Raft + node-to-node RPC (default shown)
		admin_listen     127.0.0.1:7101        # admin API, /health/*, /metrics (default shown)
		admin_tls        /etc/cbproxy/admin.crt /etc/cbproxy/admin.key   # optional HTTPS for the admin API
		bootstrap_expect 3                     # or: bootstrap (single node)
		join             127.0.0.1:7102 127.0.0.1:7103   # admin addresses of peers
		token            ops    {env.CBPROXY_OPS_TOKEN}    operate
		token            viewer {env.CBPROXY_VIEW_TOKEN}   read
		cluster_secret   {env.CBPROXY_CLUSTER_SECRET}
		cluster_tls      cert.pem key.pem ca.pem   # optional mTLS between nodes
	}
}

app.example.com {
	cbproxy codingbrain {
		pool blue   10.0.0.11:8765 10.0.0.12:8765
		pool green  10.0.0.21:8765
		pool canary 10.0.0.31:8765
		weights blue=100
		sticky  cookie                     # or: sticky cookie NAME MAX_AGE | sticky header X-User-Id ; default: off
		override_header X-Cbproxy-Pool     # optional: override_header NAME [secret SECRET]
		expose_pool                        # optional: add X-Cbproxy-Pool to responses
		lb_policy round_robin              # balancing inside a pool: Caddy's policy names
		health  /health/ready 2s           # health PATH INTERVAL [timeout 2s] [fails 2] [passes 2]
		guard   10m
		slo {
			advance  error_rate<0.1% p95<500ms
			rollback error_rate>1%   p95>2s
			window       30s
			min_requests 100
			consecutive  3
		}
	}
}
`

func adapt(t *testing.T, caddyfileText string) map[string]any {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileText), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warnings {
		// contractCaddyfile aligns its columns, as people do.
		if !strings.Contains(w.Message, "not formatted") {
			t.Errorf("warning: %v", w)
		}
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// findHandlers returns every handler object named name anywhere in v.
func findHandlers(v any, name string) []map[string]any {
	var found []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == name {
			found = append(found, v)
		}
		for _, c := range v {
			found = append(found, findHandlers(c, name)...)
		}
	case []any:
		for _, c := range v {
			found = append(found, findHandlers(c, name)...)
		}
	}
	return found
}

func TestAdaptContractExample(t *testing.T) {
	cfg := adapt(t, contractCaddyfile)
	apps := cfg["apps"].(map[string]any)
	jsonEqual(t, apps["cbproxy"], `{"node_id":"node1","data_dir":"/var/lib/cbproxy","cluster_listen":"127.0.0.1:7001","admin_listen":"127.0.0.1:7101",
		"admin_tls":{"cert":"/etc/cbproxy/admin.crt","key":"/etc/cbproxy/admin.key"},"bootstrap_expect":3,
		"join":["127.0.0.1:7102","127.0.0.1:7103"],
		"tokens":[{"name":"ops","secret":"{env.CBPROXY_OPS_TOKEN}","role":"operate"},{"name":"viewer","secret":"{env.CBPROXY_VIEW_TOKEN}","role":"read"}],
		"cluster_secret":"{env.CBPROXY_CLUSTER_SECRET}","cluster_tls":{"cert":"cert.pem","key":"key.pem","ca":"ca.pem"}}`)
	handlers := findHandlers(apps["http"], "cbproxy")
	if len(handlers) != 1 {
		t.Fatalf("found %d cbproxy handlers in %v", len(handlers), apps["http"])
	}
	jsonEqual(t, handlers[0], `{"handler":"cbproxy",`+contractHandlerJSON+`}`)

	// The adapted handler loads back into the module.
	raw, _ := json.Marshal(handlers[0])
	var h Handler
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatalf("adapted JSON does not decode into the handler: %v", err)
	}
}

func TestAdaptDirectiveOrder(t *testing.T) {
	cfg := adapt(t, `:8080 {
	reverse_proxy /plain/* 127.0.0.1:9000
	cbproxy svc
}`)
	routesJSON, _ := json.Marshal(cfg["apps"].(map[string]any)["http"])
	s := string(routesJSON)
	if i, j := strings.Index(s, `"handler":"cbproxy"`), strings.Index(s, `"handler":"reverse_proxy"`); i < 0 || j < 0 || i > j {
		t.Fatalf("cbproxy must sort before reverse_proxy: %s", s)
	}
}

func FuzzCaddyfileDirective(f *testing.F) {
	f.Add(strings.Split(strings.Split(contractCaddyfile, "app.example.com {\n")[1], "\n}\n")[0])
	for _, tt := range directiveExamples {
		f.Add(tt.input)
	}
	for _, tt := range directiveRefusals {
		f.Add(tt.input)
	}
	for _, seed := range []string{
		"cbproxy svc {\npool blue 10.0.0.1:80 {\nversion v1\n}\nweights blue=99.5 canary=0.5\n}",
		"cbproxy svc {\nsticky header X-User\noverride_header X secret s\nlb_policy header X-T\n}",
		"cbproxy svc {\nhealth /r 2s timeout 1s fails 3 passes 4\nslo {\nadvance error_rate<1% p95<1s\n}\n}",
		"cbproxy svc {\nsticky cookie sid 24h\n}",
		"cbproxy svc {\npool a 10.0.0.1:80\nlatency_histogram\nexpose_pool\n}",
		"cbproxy svc {\npool a 10.0.0.1:80\nbackend_metrics\nlatency_histogram\n}",
		"cbproxy svc {\nfast_path off\n}",
		"cbproxy svc {\nfast_path on\nexpose_pool\n}",
		"cbproxy svc {\nnotify pager https://hooks.example/x {\nevents guard_breach rollout_rolled_back\nsecret {env.S}\nformat slack\ntimeout 3s\n}\n}",
		"cbproxy svc {\nnotify a http://127.0.0.1:9/h\nnotify b {env.URL}\n}",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		d, err := dispenser(input)
		if err != nil {
			return
		}
		h := new(Handler)
		if err := h.UnmarshalCaddyfile(d); err != nil {
			return
		}
		// What the parser accepts is valid JSON config for the module.
		raw, err := json.Marshal(h)
		if err != nil {
			t.Fatalf("accepted config does not marshal: %v", err)
		}
		var back Handler
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatalf("accepted config %s does not decode: %v", raw, err)
		}
		if spec, ok := back.seed(); ok {
			if _, err := state.NormalizeSpec(back.Service, spec); err != nil {
				t.Fatalf("accepted seed is invalid after a JSON round trip: %v", err)
			}
		}
	})
}

func FuzzCaddyfileGlobalOption(f *testing.F) {
	f.Add(strings.Split(strings.Split(contractCaddyfile, "{\n\tcbproxy ")[1], "\n}\n\napp")[0])
	f.Add("{\nbootstrap\ntoken a b admin\n}")
	f.Add("{\nnotify ops https://hooks.example/x {\nevents node_lost gate_refused\nsecret s\nformat json\ntimeout 1m\n}\nnotify chat {env.SLACK_URL} {\nformat slack\n}\n}")
	for _, tt := range globalOptionRefusals {
		f.Add(strings.TrimPrefix(tt.input, "cbproxy "))
	}
	f.Fuzz(func(t *testing.T, input string) {
		d, err := dispenser("cbproxy " + input)
		if err != nil {
			return
		}
		app := new(App)
		if err := app.UnmarshalCaddyfile(d); err != nil {
			return
		}
		raw, err := json.Marshal(app)
		if err != nil {
			t.Fatalf("accepted config does not marshal: %v", err)
		}
		var back App
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatalf("accepted config %s does not decode: %v", raw, err)
		}
		for _, n := range back.Notifiers {
			if hasPlaceholder(n.URL) {
				continue
			}
			if err := state.CheckNotifierSpec(n.spec("", nil)); err != nil {
				t.Fatalf("accepted notify %+v is invalid after a JSON round trip: %v", n, err)
			}
		}
	})
}

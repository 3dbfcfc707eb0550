package proxymod

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/cbproxy/cbproxy/controlplane/adminapi"
	"github.com/cbproxy/cbproxy/controlplane/state"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("cbproxy", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("cbproxy", parseHandlerDirective)
	httpcaddyfile.RegisterDirectiveOrder("cbproxy", httpcaddyfile.Before, "reverse_proxy")
}

func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("cbproxy: the global option is given twice; merge the two blocks")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "cbproxy", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the cbproxy global option:
//
//	cbproxy {
//		node_id          <id>
//		data_dir         <path>
//		cluster_listen   <host:port>
//		admin_listen     <host:port>
//		admin_tls        <cert_file> <key_file>
//		bootstrap
//		bootstrap_expect <nodes>
//		join             <admin_address...>
//		token            <name> <secret> read|operate|admin
//		cluster_secret   <secret>
//		cluster_tls      <cert_file> <key_file> <ca_file>
//		notify           <name> <url> {
//			events  <kind...>
//			secret  <secret>
//			format  json|slack
//			timeout <duration>
//		}
//	}
//
// `token` may be repeated, and so may `join` and `notify`. Secrets may be placeholders
// such as `{env.CBPROXY_OPS_TOKEN}`, replaced when the config is loaded.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option's name
	if d.NextArg() {
		return d.Errf("cbproxy: the global option takes no arguments, only a block, not %q", d.Val())
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] && opt != "token" && opt != "join" && opt != "notify" {
			return d.Errf("cbproxy: %s is given twice; keep one", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "node_id":
			err = singleArg(d, opt, &a.NodeID)
		case "data_dir":
			err = singleArg(d, opt, &a.DataDir)
		case "cluster_listen":
			err = singleArg(d, opt, &a.ClusterListen)
		case "admin_listen":
			err = singleArg(d, opt, &a.AdminListen)
		case "cluster_secret":
			err = singleArg(d, opt, &a.ClusterSecret)
		case "admin_tls":
			args, err := lineArgs(d, "cbproxy", "admin_tls <cert_file> <key_file>", 2, 2)
			if err != nil {
				return err
			}
			a.AdminTLS = &AdminTLS{Cert: args[0], Key: args[1]}
		case "bootstrap":
			if _, err := lineArgs(d, "cbproxy", "bootstrap (no arguments)", 0, 0); err != nil {
				return err
			}
			a.Bootstrap = true
		case "bootstrap_expect":
			args, err := lineArgs(d, "cbproxy", "bootstrap_expect <nodes>", 1, 1)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 {
				return d.Errf("cbproxy: bootstrap_expect needs a number of nodes, 1 or more, not %q", args[0])
			}
			a.BootstrapExpect = n
		case "join":
			args, err := lineArgs(d, "cbproxy", "join <admin_address...>", 1, -1)
			if err != nil {
				return err
			}
			a.Join = append(a.Join, args...)
		case "token":
			args, err := lineArgs(d, "cbproxy", "token <name> <secret> read|operate|admin", 3, 3)
			if err != nil {
				return err
			}
			if _, err := adminapi.ParseRole(args[2]); err != nil {
				return d.Errf("cbproxy: token %s: %v", args[0], err)
			}
			a.Tokens = append(a.Tokens, Token{Name: args[0], Secret: args[1], Role: args[2]})
		case "cluster_tls":
			args, err := lineArgs(d, "cbproxy", "cluster_tls <cert_file> <key_file> <ca_file>", 3, 3)
			if err != nil {
				return err
			}
			a.ClusterTLS = &ClusterTLS{Cert: args[0], Key: args[1], CA: args[2]}
		case "notify":
			var nt Notifier
			if nt, err = unmarshalNotify(d, "cbproxy"); err == nil {
				a.Notifiers = append(a.Notifiers, nt)
			}
		default:
			return d.Errf("cbproxy: unknown option %q; expected node_id, data_dir, cluster_listen, admin_listen, admin_tls, bootstrap, bootstrap_expect, join, token, cluster_secret, cluster_tls or notify", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// singleArg reads the one argument of a global option into dst.
func singleArg(d *caddyfile.Dispenser, opt string, dst *string) error {
	args, err := lineArgs(d, "cbproxy", opt+" <value>", 1, 1)
	if err == nil {
		*dst = args[0]
	}
	return err
}

// lineArgs returns the rest of the current line's arguments, between min and
// max of them (max < 0: no limit); the error names where and what is expected.
func lineArgs(d *caddyfile.Dispenser, where, usage string, minArgs, maxArgs int) ([]string, error) {
	args := d.RemainingArgs()
	if len(args) < minArgs || maxArgs >= 0 && len(args) > maxArgs {
		return nil, d.Errf("%s: %d arguments where %s is expected", where, len(args), usage)
	}
	return args, nil
}

func parseHandlerDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	cbproxy [<matcher>] <service> {
//		pool            <name> [<backend...>] [{
//			version <label>
//		}]
//		weights         <pool>=<percent>...
//		sticky          cookie [<name> [<max_age>]] | header <name>
//		override_header <name> [secret <secret>]
//		expose_pool
//		latency_histogram
//		backend_metrics
//		fast_path       on|off
//		lb_policy       <name> [<options...>]
//		dial_timeout            <duration>
//		response_header_timeout <duration>
//		stream_close_delay <duration> [rollback <duration>]
//		health          <path> <interval> [timeout <duration>] [fails <n>] [passes <n>]
//		guard           <duration>
//		slo {
//			advance      error_rate<<percent>% p95<<duration>
//			rollback     error_rate><percent>% p95><duration>
//			window       <duration>
//			min_requests <n>
//			consecutive  <n>
//		}
//		notify <name> <url> {
//			events  <kind...>
//			secret  <secret>
//			format  json|slack
//			timeout <duration>
//		}
//	}
//
// `notify` (repeatable) seeds a notifier of this service's events only.
// `pool`, `weights`, `health`, `guard` and `slo` seed the service: they
// create it only if the cluster has never seen its name. A block without
// them (or no block) routes a service defined elsewhere. A backend is
// host:port, [ipv6]:port, name:port or https://host:port (TLS). `lb_policy`
// takes Caddy's reverse_proxy policies (round_robin by default).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if !d.NextArg() {
		return d.Err("cbproxy: the service name is missing; write: cbproxy <service> { ... }")
	}
	h.Service = d.Val()
	if err := state.ValidateServiceName(h.Service); err != nil {
		return d.Errf("cbproxy: %v", err)
	}
	where := "cbproxy " + h.Service
	if d.NextArg() {
		return d.Errf("%s: %q after the service name; put settings in a block: cbproxy <service> { ... }", where, d.Val())
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] && sub != "pool" && sub != "notify" {
			return d.Errf("%s: %s is given twice; keep one", where, sub)
		}
		seen[sub] = true
		var err error
		switch sub {
		case "pool":
			err = h.unmarshalPool(d, where)
		case "weights":
			err = h.unmarshalWeights(d, where)
		case "sticky":
			err = h.unmarshalSticky(d, where)
		case "override_header":
			err = h.unmarshalOverride(d, where)
		case "expose_pool":
			_, err = lineArgs(d, where, "expose_pool (no arguments)", 0, 0)
			h.ExposePool = true
		case "latency_histogram":
			_, err = lineArgs(d, where, "latency_histogram (no arguments)", 0, 0)
			h.LatencyHistogram = true
		case "backend_metrics":
			_, err = lineArgs(d, where, "backend_metrics (no arguments)", 0, 0)
			h.BackendMetrics = true
		case "fast_path":
			var args []string
			if args, err = lineArgs(d, where, "fast_path on|off", 1, 1); err == nil {
				switch args[0] {
				case "on", "off":
					on := args[0] == "on"
					h.FastPath = &on
				default:
					err = d.Errf("%s: fast_path takes on or off, not %q", where, args[0])
				}
			}
		case "lb_policy":
			err = h.unmarshalLBPolicy(d, where)
		case "stream_close_delay":
			err = h.unmarshalStreamCloseDelay(d, where)
		case "health":
			err = h.unmarshalHealth(d, where)
		case "guard":
			var args []string
			if args, err = lineArgs(d, where, "guard <duration>", 1, 1); err == nil {
				var g state.Duration
				g, err = parseDuration(d, where+": guard", args[0])
				h.Guard = &g
			}
		case "slo":
			err = h.unmarshalSLO(d, where)
		case "notify":
			var nt Notifier
			if nt, err = unmarshalNotify(d, where); err == nil {
				h.Notifiers = append(h.Notifiers, nt)
			}
		case "dial_timeout", "response_header_timeout":
			var args []string
			if args, err = lineArgs(d, where, sub+" <duration>", 1, 1); err == nil {
				var v state.Duration
				if v, err = parseDuration(d, where+": "+sub, args[0]); err == nil && v == 0 {
					err = d.Errf("%s: %s must be above 0", where, sub)
				}
				if sub == "dial_timeout" {
					h.DialTimeout = caddy.Duration(v)
				} else {
					h.ResponseHeaderTimeout = caddy.Duration(v)
				}
			}
		default:
			err = d.Errf("%s: unknown subdirective %q; expected pool, weights, sticky, override_header, expose_pool, latency_histogram, backend_metrics, fast_path, lb_policy, dial_timeout, response_header_timeout, stream_close_delay, health, guard, slo or notify", where, sub)
		}
		if err != nil {
			return err
		}
	}
	if spec, ok := h.seed(); ok {
		if err := state.CheckSpec(h.Service, spec); err != nil {
			return d.Errf("%s: %v", where, err)
		}
	}
	return nil
}

func (h *Handler) unmarshalPool(d *caddyfile.Dispenser, where string) error {
	args, err := lineArgs(d, where, "pool <name> <backend...>", 1, -1)
	if err != nil {
		return err
	}
	name := args[0]
	if err := state.ValidatePoolName(name); err != nil {
		return d.Errf("%s: pool: %v", where, err)
	}
	if _, dup := h.Pools[name]; dup {
		return d.Errf("%s: pool %s is defined twice; list all its backends on one line", where, name)
	}
	pool := state.PoolSpec{Backends: args[1:]}
	if err := state.ValidateBackends(pool.Backends); err != nil {
		return d.Errf("%s: pool %s: %v", where, name, err)
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() != "version" {
			return d.Errf("%s: pool %s: unknown option %q; expected version <label>", where, name, d.Val())
		}
		args, err := lineArgs(d, where+": pool "+name, "version <label>", 1, 1)
		if err != nil {
			return err
		}
		pool.Version = args[0]
	}
	if h.Pools == nil {
		h.Pools = make(map[string]state.PoolSpec)
	}
	h.Pools[name] = pool
	return nil
}

func (h *Handler) unmarshalWeights(d *caddyfile.Dispenser, where string) error {
	args, err := lineArgs(d, where, "weights <pool>=<percent>...", 1, -1)
	if err != nil {
		return err
	}
	h.Weights = make(state.Weights, len(args))
	for _, arg := range args {
		pool, pct, ok := strings.Cut(arg, "=")
		if !ok {
			return d.Errf("%s: weights: %q is not <pool>=<percent>; write it like blue=99", where, arg)
		}
		if err := state.ValidatePoolName(pool); err != nil {
			return d.Errf("%s: weights: %v", where, err)
		}
		if _, dup := h.Weights[pool]; dup {
			return d.Errf("%s: weights: pool %s is given twice", where, pool)
		}
		w, err := state.ParseWeight(pct)
		if err != nil {
			return d.Errf("%s: weights: pool %s: %v", where, pool, err)
		}
		h.Weights[pool] = w
	}
	return nil
}

func (h *Handler) unmarshalSticky(d *caddyfile.Dispenser, where string) error {
	const usage = "sticky cookie [<name> [<max_age>]] | sticky header <name>"
	args, err := lineArgs(d, where, usage, 1, 3)
	if err != nil {
		return err
	}
	s := &Sticky{Mode: args[0]}
	switch {
	case s.Mode == stickyCookie:
		if len(args) > 1 {
			s.Name = args[1]
		}
		if len(args) > 2 {
			age, err := caddy.ParseDuration(args[2])
			if err != nil || age <= 0 {
				return d.Errf("%s: sticky: max_age %q is not a duration above 0 like 24h", where, args[2])
			}
			s.MaxAge = caddy.Duration(age)
		}
	case s.Mode == stickyHeader && len(args) == 2:
		s.Name = args[1]
	default:
		return d.Errf("%s: sticky %s: expected %s", where, strings.Join(args, " "), usage)
	}
	h.Sticky = s
	return nil
}

func (h *Handler) unmarshalOverride(d *caddyfile.Dispenser, where string) error {
	const usage = "override_header <name> [secret <secret>]"
	args, err := lineArgs(d, where, usage, 1, 3)
	if err != nil {
		return err
	}
	o := &OverrideHeader{Name: args[0]}
	switch {
	case len(args) == 3 && args[1] == "secret":
		o.Secret = args[2]
	case len(args) != 1:
		return d.Errf("%s: override_header %s: expected %s", where, strings.Join(args, " "), usage)
	}
	h.OverrideHeader = o
	return nil
}

// unmarshalLBPolicy reads a selection policy the way reverse_proxy does.
func (h *Handler) unmarshalLBPolicy(d *caddyfile.Dispenser, where string) error {
	if !d.NextArg() {
		return d.Errf("%s: lb_policy needs a policy name such as round_robin, least_conn or ip_hash", where)
	}
	name := d.Val()
	modID := "http.reverse_proxy.selection_policies." + name
	unm, err := caddyfile.UnmarshalModule(d, modID)
	if err != nil {
		return d.Errf("%s: lb_policy %s: %v", where, name, err)
	}
	sel, ok := unm.(reverseproxy.Selector)
	if !ok {
		return d.Errf("%s: lb_policy %s: module %s is not a selection policy", where, name, modID)
	}
	h.LBPolicyRaw = caddyconfig.JSONModuleObject(sel, "policy", name, nil)
	return nil
}

func (h *Handler) unmarshalStreamCloseDelay(d *caddyfile.Dispenser, where string) error {
	const usage = "stream_close_delay <duration> [rollback <duration>]"
	args, err := lineArgs(d, where, usage, 1, 3)
	if err != nil {
		return err
	}
	if len(args) != 1 && (len(args) != 3 || args[1] != "rollback") {
		return d.Errf("%s: stream_close_delay %s: expected %s", where, strings.Join(args, " "), usage)
	}
	delay, err := parseDuration(d, where+": stream_close_delay", args[0])
	if err != nil {
		return err
	}
	h.StreamCloseDelay = new(caddy.Duration(delay))
	if len(args) == 3 {
		rollback, err := parseDuration(d, where+": stream_close_delay rollback", args[2])
		if err != nil {
			return err
		}
		h.StreamCloseDelayRollback = new(caddy.Duration(rollback))
	}
	return nil
}

func (h *Handler) unmarshalHealth(d *caddyfile.Dispenser, where string) error {
	const usage = "health <path> <interval> [timeout <duration>] [fails <n>] [passes <n>]"
	args, err := lineArgs(d, where, usage, 2, 8)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(args[0], "/") {
		return d.Errf("%s: health: path %q must start with /, like /health/ready", where, args[0])
	}
	// Start from the defaults so that the JSON shows what applies.
	hc := new(state.HealthCheck)
	*hc = state.DefaultHealthCheck
	hc.Path = args[0]
	if hc.Interval, err = parseDuration(d, where+": health interval", args[1]); err != nil {
		return err
	}
	opts := args[2:]
	if len(opts)%2 != 0 {
		return d.Errf("%s: health: option %q has no value; expected %s", where, opts[len(opts)-1], usage)
	}
	for i := 0; i < len(opts); i += 2 {
		key, val := opts[i], opts[i+1]
		switch key {
		case "timeout":
			hc.Timeout, err = parseDuration(d, where+": health timeout", val)
		case "fails":
			hc.Fails, err = parseCount(d, where+": health fails", val)
		case "passes":
			hc.Passes, err = parseCount(d, where+": health passes", val)
		default:
			err = d.Errf("%s: health: unknown option %q; expected %s", where, key, usage)
		}
		if err != nil {
			return err
		}
	}
	h.Health = hc
	return nil
}

func (h *Handler) unmarshalSLO(d *caddyfile.Dispenser, where string) error {
	if d.NextArg() {
		return d.Errf("%s: slo takes a block, not %q", where, d.Val())
	}
	slo := new(state.SLO)
	*slo = state.DefaultSLO
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		var err error
		switch opt {
		case "advance", "rollback":
			th, op := &slo.Advance, byte('<')
			if opt == "rollback" {
				th, op = &slo.Rollback, '>'
			}
			usage := opt + " error_rate" + string(op) + "<percent>% p95" + string(op) + "<duration>"
			var args []string
			if args, err = lineArgs(d, where+": slo", usage, 1, 2); err == nil {
				err = parseThresholds(d, where+": slo "+opt, args, op, th)
			}
		case "window":
			var args []string
			if args, err = lineArgs(d, where+": slo", "window <duration>", 1, 1); err == nil {
				slo.Window, err = parseDuration(d, where+": slo window", args[0])
			}
		case "min_requests", "consecutive":
			var args []string
			if args, err = lineArgs(d, where+": slo", opt+" <n>", 1, 1); err == nil {
				n := &slo.MinRequests
				if opt == "consecutive" {
					n = &slo.Consecutive
				}
				*n, err = parseCount(d, where+": slo "+opt, args[0])
			}
		default:
			err = d.Errf("%s: slo: unknown option %q; expected advance, rollback, window, min_requests or consecutive", where, opt)
		}
		if err != nil {
			return err
		}
	}
	h.SLO = slo
	return nil
}

// parseThresholds reads conditions like error_rate<0.1% and p95<500ms (op is
// the comparison the line must use: < for advance, > for rollback).
func parseThresholds(d *caddyfile.Dispenser, where string, conds []string, op byte, th *state.Thresholds) error {
	seen := make(map[string]bool)
	for _, cond := range conds {
		i := strings.IndexAny(cond, "<>")
		if i < 0 {
			return d.Errf("%s: %q is not a condition; write error_rate%c1%% or p95%c500ms", where, cond, op, op)
		}
		metric, value := cond[:i], cond[i+1:]
		if cond[i] != op {
			return d.Errf("%s: %q compares with %c; this line takes %s%c…", where, cond, cond[i], metric, op)
		}
		if seen[metric] {
			return d.Errf("%s: %s is given twice", where, metric)
		}
		seen[metric] = true
		switch metric {
		case "error_rate":
			pct, ok := strings.CutSuffix(value, "%")
			rate, err := strconv.ParseFloat(pct, 64)
			if !ok || err != nil || math.IsNaN(rate) || rate < 0 || rate > 100 {
				return d.Errf("%s: error_rate %q is not a percentage from 0%% to 100%% like 0.1%%", where, value)
			}
			th.ErrorRate = rate / 100
		case "p95":
			p95, err := caddy.ParseDuration(value)
			if err != nil || p95 <= 0 {
				return d.Errf("%s: p95 %q is not a duration above 0 like 500ms", where, value)
			}
			th.P95ms = float64(p95) / float64(time.Millisecond)
		default:
			return d.Errf("%s: unknown measure %q; expected error_rate or p95", where, metric)
		}
	}
	return nil
}

// parseDuration reads a Caddy duration (Go's syntax plus d for days) that is
// not negative.
func parseDuration(d *caddyfile.Dispenser, where, s string) (state.Duration, error) {
	v, err := caddy.ParseDuration(s)
	if err != nil || v < 0 {
		return 0, d.Errf("%s: %q is not a duration like 500ms, 2s or 10m", where, s)
	}
	return state.Duration(v), nil
}

// parseCount reads a whole number of 1 or more.
func parseCount(d *caddyfile.Dispenser, where, s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, d.Errf("%s: %q is not a whole number of 1 or more", where, s)
	}
	return n, nil
}

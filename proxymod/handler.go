package proxymod

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/textproto"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"golang.org/x/net/http/httpguts"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler routes the requests of one service to its pools by the weights in
// cbproxy's replicated state, and proxies them to a backend of the chosen
// pool: plain HTTP/1.x requests to plain HTTP backends on cbproxy's own
// upstream path (`fast_path`), everything else with Caddy's own reverse
// proxy (its transport, retries, streaming and WebSockets).
//
// A request goes to the pool named by the override header (if configured
// and valid), else to the pool of the client's sticky key (if stickiness is
// on and the client has one), else to the next pool of the exact weighted
// split. Within the pool, backends are balanced by `lb_policy`; a backend
// that refuses the connection is retried at once on another backend of the
// same pool.
//
// The pools, weights, health check, SLO and guard given here seed the
// replicated state: they create the service only if the cluster has never
// seen its name, and never overwrite it afterwards. The JSON of this seed
// part is the service body of the admin API.
//
// This handler sets the placeholder `{http.vars.cbproxy_pool}` to the name
// of the chosen pool ("none" when the request was refused because no pool
// could take it).
type Handler struct {
	// The service to route. Required.
	Service string `json:"service,omitempty"`

	// Seed: the pools of the service by name, each with its backends
	// (`host:port`, `[ipv6]:port`, `name:port`, or `https://host:port` for
	// TLS to the backend) and an optional version label.
	Pools map[string]state.PoolSpec `json:"pools,omitempty"`

	// Seed: the share of each pool in percent (at most two decimals, summing
	// to 100; pools left out get 0). Default: 100 to the first pool by name.
	Weights state.Weights `json:"weights,omitempty"`

	// Seed: the active health check of the backends. Default: none (only
	// passive checks; backends count as healthy).
	Health *state.HealthCheck `json:"health,omitempty"`

	// Seed: the thresholds rollouts are judged by. Default: the runbook's.
	SLO *state.SLO `json:"slo,omitempty"`

	// Seed: how long pools that gained share stay under the rollback SLO
	// after a change. Default: 10m.
	Guard *state.Duration `json:"guard,omitempty"`

	// Seed: webhooks the leader sends this service's events to
	// (docs/caddyfile.md "notify"). Each seeds the replicated notifier of
	// its name, limited to this service.
	Notifiers []Notifier `json:"notifiers,omitempty"`

	// Keeps each client on one pool across weight changes. Default: off.
	Sticky *Sticky `json:"sticky,omitempty"`

	// Lets a request choose its pool with a header. Default: off.
	OverrideHeader *OverrideHeader `json:"override_header,omitempty"`

	// Adds the `X-Cbproxy-Pool` header, naming the pool that served the
	// request, to responses. Default: off.
	ExposePool bool `json:"expose_pool,omitempty"`

	// Exports the latency histogram of each of the service's pools
	// (`cbproxy_request_duration_seconds`) on /metrics, for a P95 per pool
	// in Prometheus. A service any loaded cbproxy handler asks it for has
	// them. Default: off, because the buckets of every pool of every
	// service are most of /metrics at hundreds of services; the SLO judge
	// needs none of them (it reads the same counters in the process).
	LatencyHistogram bool `json:"latency_histogram,omitempty"`

	// Exports each backend's request counts by status class and latency
	// histogram (`cbproxy_backend_requests_total`,
	// `cbproxy_backend_request_duration_seconds`) on /metrics, next to its
	// pool's. A service any loaded cbproxy handler asks it for has them;
	// the handlers that ask count their requests in them. Default: off:
	// 6 backends of 1,000 services would add some 100,000 series to
	// /metrics, ten times its size.
	BackendMetrics bool `json:"backend_metrics,omitempty"`

	// How to balance requests between the backends of a pool: any of Caddy's
	// reverse_proxy selection policies. Default: round_robin.
	LBPolicyRaw json.RawMessage `json:"lb_policy,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	// TLS settings for pools whose backends are written `https://host:port`
	// (Caddy's reverse_proxy transport TLS settings). Default: verify the
	// backend's certificate against the system roots.
	BackendTLS *reverseproxy.TLSConfig `json:"backend_tls,omitempty"`

	// Proxies plain HTTP/1.x requests to pools of plain HTTP backends on
	// cbproxy's own upstream path: pooled keep-alive connections, the request
	// written and the answer read on the request's goroutine, with the same
	// headers, retries, timeouts and figures as Caddy's reverse_proxy, at
	// about half its cost. Upgrades (WebSocket), HTTP/2 and HTTP/3 clients,
	// `Expect: 100-continue`, request trailers, `https://` backends and any
	// `lb_policy` but round_robin take Caddy's reverse_proxy. `false` sends
	// every request through Caddy's reverse_proxy. Default: true.
	FastPath *bool `json:"fast_path,omitempty"`

	// How long to wait for a connection to a backend. Default: 3s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// How long to wait for a backend's response header once the request is
	// sent. A backend that hangs past it fails the request (504), which
	// counts against the pool's SLO and the backend's health. Raise it for
	// endpoints that answer slowly on purpose (long polling). Default: 30s.
	ResponseHeaderTimeout caddy.Duration `json:"response_header_timeout,omitempty"`

	// How long upgraded connections (WebSockets) and event streams
	// (`text/event-stream`) to a backend stay open once the backend stops
	// taking new requests because its pool's weight went to 0 (weights,
	// switch, a rollout step), it was drained or removed, or a reload left
	// no cbproxy handler for the service. Then cbproxy closes them, and
	// their clients reconnect to the pools that now take traffic. A pool
	// that gets its weight back (a backend undrained) before the delay
	// keeps its connections. 0 closes them at once. Default: 1m. A reload
	// keeps the connections of the services it still serves.
	StreamCloseDelay *caddy.Duration `json:"stream_close_delay,omitempty"`

	// The same delay when the weight went to 0 by a rollback or a rollout
	// abort: the pool was judged harmful. Default: 5s, or
	// stream_close_delay if that is shorter.
	StreamCloseDelayRollback *caddy.Duration `json:"stream_close_delay_rollback,omitempty"`

	route *route
	// held is set once Provision holds the route (routes.hold); Cleanup
	// releases it. Requests still served after Cleanup keep using it.
	held bool
	// acquired is set once Provision counted this handler in its route's
	// streams; Cleanup then releases it.
	acquired     bool
	streamDelays streamDelays
	// proxy serves pools of plain HTTP backends, tlsProxy pools of https://
	// backends (a pool has one scheme).
	proxy, tlsProxy *reverseproxy.Handler
	// fast is set when plain HTTP pools may take the fast path (fastpath.go).
	fast bool

	overrideKey    string // canonical header key, "" when off
	overrideSecret []byte
	stickyMode     string
	stickyKey      string // canonical header key (header mode)
	cookieName     string
	cookieMaxAge   int // seconds
}

// Sticky configures session affinity. Each client's key is hashed to one of
// 10,000 buckets and pools own ranges of buckets in proportion to their
// weights, so a client keeps its pool while that pool's share grows, and
// leaves it when the share goes back to 0.
type Sticky struct {
	// Where the client's key comes from: `cookie` (cbproxy gives every new
	// client one) or `header` (the client sends it, e.g. a user id).
	Mode string `json:"mode,omitempty"`

	// The name of the cookie or header. Default for cookies:
	// `cbproxy_<service>`; required for headers.
	Name string `json:"name,omitempty"`

	// How long the cookie lives. Default: 24h.
	MaxAge caddy.Duration `json:"max_age,omitempty"`
}

// Sticky modes.
const (
	stickyCookie = "cookie"
	stickyHeader = "header"
)

// OverrideHeader lets a request name its pool, e.g. to test a canary before
// it gets traffic. The header's value is the pool name, or `name;secret`
// when a secret is set. An unknown pool, a wrong secret or a pool with no
// available backend leaves the request to the normal choice. The header is
// never passed to the backend.
type OverrideHeader struct {
	// The header's name, e.g. `X-Cbproxy-Pool`. Required.
	Name string `json:"name,omitempty"`

	// A secret the header's value must carry after a `;`. Placeholders such
	// as `{env.CBPROXY_OVERRIDE_SECRET}` are replaced.
	Secret string `json:"secret,omitempty"`
}

// Defaults and limits of the inner proxies.
const (
	defaultCookieMaxAge = 24 * time.Hour
	// maxIdleConnsPerHost is the upstream keep-alive pool: Caddy's default
	// of 32 makes it open and close connections under 64 concurrent clients.
	// Measured before cbproxy was written, on a similar 2-CPU machine (plain
	// Caddy 2.11.9, wrk -c64, 99/1 split): 256 gave +31 % throughput and
	// -21 % CPU per request.
	maxIdleConnsPerHost = 256
	// defaultDialTimeout is Caddy's own default.
	defaultDialTimeout = 3 * time.Second
	// defaultResponseHeaderTimeout bounds a hung backend: without it a hang
	// never ends, so it never shows in the SLO figures (Caddy's default is
	// none). 30 s is nginx's and HAProxy's usual order of magnitude, and far
	// above the runbook's 2 s rollback P95.
	defaultResponseHeaderTimeout = 30 * time.Second
	// retries bounds the attempts after a failed one. Retries go to backends
	// not tried yet; once all are tried, an attempt costs nothing but a loop.
	retries = 32
)

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.cbproxy",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets the handler up: it validates and registers the seed with
// the cbproxy app, loads the balancing policy and builds the inner proxies.
func (h *Handler) Provision(ctx caddy.Context) error {
	if err := state.ValidateServiceName(h.Service); err != nil {
		return err
	}
	// ctx.App, not AppIfConfigured: a site using the directive without the
	// global option gets the app with its defaults (a single-node cluster).
	app, err := ctx.App("cbproxy")
	if err != nil {
		return fmt.Errorf("getting cbproxy app: %w", err)
	}
	if spec, ok := h.seed(); ok {
		if err := state.CheckSpec(h.Service, spec); err != nil {
			return fmt.Errorf("seed of service %q: %w", h.Service, err)
		}
		if err := app.(*App).addSeed(h.Service, spec); err != nil {
			return err
		}
	}
	app.(*App).declare(h.Service)
	for _, nt := range h.Notifiers {
		if err := app.(*App).addNotifier(nt, h.Service); err != nil {
			return fmt.Errorf("service %q: %w", h.Service, err)
		}
	}

	if o := h.OverrideHeader; o != nil {
		warnLiteralSecrets(ctx.Logger(), caddy.NewReplacer(), namedSecret{"override_header secret of service " + h.Service, o.Secret})
	}
	if err := h.provisionChoice(); err != nil {
		return err
	}
	h.route, h.held = routes.hold(h.Service), true
	if h.LatencyHistogram {
		h.route.histograms.Add(1)
	}
	if h.BackendMetrics {
		h.route.backendMetrics.Add(1)
	}
	h.provisionStreamDelays()

	var proto reverseproxy.Selector = new(reverseproxy.RoundRobinSelection)
	if h.LBPolicyRaw != nil {
		mod, err := ctx.LoadModule(h, "LBPolicyRaw")
		if err != nil {
			return fmt.Errorf("loading lb_policy: %w", err)
		}
		proto = mod.(reverseproxy.Selector)
	}
	// The fast path balances by round robin only; other policies need
	// Caddy's upstream records.
	_, roundRobin := proto.(*reverseproxy.RoundRobinSelection)
	h.fast = roundRobin && (h.FastPath == nil || *h.FastPath)
	if err := h.setTimeoutDefaults(); err != nil {
		return err
	}
	sel := newPoolSelector(proto)
	if h.proxy, err = h.newInnerProxy(ctx, sel, nil); err != nil {
		return err
	}
	tlsConfig := h.BackendTLS
	if tlsConfig == nil {
		tlsConfig = new(reverseproxy.TLSConfig)
	}
	if h.tlsProxy, err = h.newInnerProxy(ctx, sel, tlsConfig); err != nil {
		return err
	}

	h.route.streams.handlerAdded()
	h.acquired = true
	return nil
}

// provisionStreamDelays fills in the stream close delays' defaults.
func (h *Handler) provisionStreamDelays() {
	d := streamDelays{change: defaultStreamCloseDelay, rollback: defaultStreamCloseDelayRollback}
	if h.StreamCloseDelay != nil {
		d.change = time.Duration(*h.StreamCloseDelay)
		d.rollback = min(d.rollback, d.change)
	}
	if h.StreamCloseDelayRollback != nil {
		d.rollback = time.Duration(*h.StreamCloseDelayRollback)
	}
	h.streamDelays = d
}

// provisionChoice prepares what the pool choice reads on the hot path.
func (h *Handler) provisionChoice() error {
	if o := h.OverrideHeader; o != nil {
		h.overrideKey = textproto.CanonicalMIMEHeaderKey(o.Name)
		if o.Secret != "" {
			secret := caddy.NewReplacer().ReplaceKnown(o.Secret, "")
			if secret == "" {
				return fmt.Errorf("override_header secret %q is empty once its placeholders are replaced; set the variable it names", o.Secret)
			}
			h.overrideSecret = []byte(secret)
		}
	}
	if s := h.Sticky; s != nil {
		h.stickyMode = s.Mode
		h.stickyKey = textproto.CanonicalMIMEHeaderKey(s.Name)
		h.cookieName = s.Name
		if h.cookieName == "" {
			h.cookieName = "cbproxy_" + h.Service
		}
		h.cookieMaxAge = int(defaultCookieMaxAge / time.Second)
		if s.MaxAge > 0 {
			h.cookieMaxAge = int(time.Duration(s.MaxAge) / time.Second)
		}
	}
	return nil
}

// setTimeoutDefaults fills the upstream timeouts that are not set.
func (h *Handler) setTimeoutDefaults() error {
	if h.DialTimeout < 0 || h.ResponseHeaderTimeout < 0 {
		return fmt.Errorf("dial_timeout and response_header_timeout must not be negative")
	}
	if h.DialTimeout == 0 {
		h.DialTimeout = caddy.Duration(defaultDialTimeout)
	}
	if h.ResponseHeaderTimeout == 0 {
		h.ResponseHeaderTimeout = caddy.Duration(defaultResponseHeaderTimeout)
	}
	return nil
}

// newInnerProxy builds and provisions a Caddy reverse proxy that serves the
// chosen pool. Provision keeps every field set here: it loads modules only
// from raw JSON (TransportRaw), and fills LoadBalancing.SelectionPolicy and
// TryInterval only when they are unset (TryInterval stays 0 because
// TryDuration is 0, so a retry does not sleep).
//
// Its transport is then wrapped to register the streams it opens, and its
// StreamCloseDelay is "never": Caddy's Cleanup would otherwise close every
// upgraded connection at each reload. cbproxy closes streams itself, when
// their backend stops taking requests or no config serves the service.
func (h *Handler) newInnerProxy(ctx caddy.Context, sel reverseproxy.Selector, tls *reverseproxy.TLSConfig) (*reverseproxy.Handler, error) {
	// No compression asked of backends on the client's behalf: the fast
	// path does not, and both paths send backends the same request.
	compression := false
	transport := &reverseproxy.HTTPTransport{
		Compression:           &compression,
		TLS:                   tls,
		KeepAlive:             &reverseproxy.KeepAlive{MaxIdleConnsPerHost: maxIdleConnsPerHost},
		DialTimeout:           h.DialTimeout,
		ResponseHeaderTimeout: h.ResponseHeaderTimeout,
	}
	rp := &reverseproxy.Handler{
		TransportRaw: caddyconfig.JSONModuleObject(transport, "protocol", "http", nil),
		LoadBalancing: &reverseproxy.LoadBalancing{
			SelectionPolicy: sel,
			Retries:         retries,
		},
		DynamicUpstreams: poolUpstreams{},
		StreamCloseDelay: caddy.Duration(math.MaxInt64),
	}
	if err := rp.Provision(ctx); err != nil {
		return nil, fmt.Errorf("provisioning reverse proxy: %w", err)
	}
	ht, ok := rp.Transport.(*reverseproxy.HTTPTransport)
	if !ok {
		return nil, fmt.Errorf("reverse proxy transport is %T, not Caddy's HTTP transport", rp.Transport)
	}
	rp.Transport = &streamTransport{HTTPTransport: ht, streams: &h.route.streams, delays: h.streamDelays}
	return rp, nil
}

// seed returns the seed part of the handler's config, if it has one.
func (h *Handler) seed() (state.ServiceSpec, bool) {
	spec := state.ServiceSpec{Pools: h.Pools, Weights: h.Weights, Health: h.Health, SLO: h.SLO, Guard: h.Guard}
	return spec, h.Pools != nil || h.Weights != nil || h.Health != nil || h.SLO != nil || h.Guard != nil
}

// Validate checks the handler-local settings (Provision checks the seed).
func (h *Handler) Validate() error {
	if s := h.Sticky; s != nil {
		switch s.Mode {
		case stickyCookie:
			if err := (&http.Cookie{Name: h.cookieName, Value: "x"}).Valid(); err != nil {
				return fmt.Errorf("sticky cookie name %q is not a valid cookie name", h.cookieName)
			}
		case stickyHeader:
			if !httpguts.ValidHeaderFieldName(s.Name) {
				return fmt.Errorf("sticky header needs a valid header name, not %q", s.Name)
			}
		default:
			return fmt.Errorf("sticky mode %q is not cookie or header", s.Mode)
		}
		if s.MaxAge < 0 {
			return fmt.Errorf("sticky max_age %s is negative", time.Duration(s.MaxAge))
		}
	}
	if o := h.OverrideHeader; o != nil && !httpguts.ValidHeaderFieldName(o.Name) {
		return fmt.Errorf("override_header needs a valid header name, not %q", o.Name)
	}
	for _, d := range []struct {
		name string
		v    *caddy.Duration
	}{{"stream_close_delay", h.StreamCloseDelay}, {"stream_close_delay_rollback", h.StreamCloseDelayRollback}} {
		if d.v != nil && *d.v < 0 {
			return fmt.Errorf("%s %s is negative", d.name, time.Duration(*d.v))
		}
	}
	return nil
}

// Cleanup releases the inner proxies (they leave upgraded connections
// open) and tells the route that this handler is gone: when no loaded config
// serves the service any more, its streams close after their delay.
func (h *Handler) Cleanup() error {
	if h.acquired {
		h.acquired = false
		h.route.streams.handlerRemoved()
	}
	if h.held {
		h.held = false
		if h.LatencyHistogram {
			h.route.histograms.Add(-1)
		}
		if h.BackendMetrics {
			h.route.backendMetrics.Add(-1)
		}
		routes.release(h.route)
	}
	var errs []error
	for _, rp := range []*reverseproxy.Handler{h.proxy, h.tlsProxy} {
		if rp != nil {
			errs = append(errs, rp.Cleanup())
		}
	}
	return errors.Join(errs...)
}

// poolHeader is the response header set with expose_pool.
const poolHeader = "X-Cbproxy-Pool"

// noneVar is the cbproxy_pool variable of refused requests.
var noneVar any = "none"

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	t := h.route.table.Load()
	if t.split == nil {
		caddyhttp.SetVar(r.Context(), "cbproxy_pool", noneVar)
		t.none.record(class5xx, 0)
		if t.owners != nil {
			t.owed(t.owners.next())
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write(t.refusal)
		return nil
	}
	i, how := h.choosePool(t, r)
	p := &t.pools[i]
	if how == byNewKey {
		h.setStickyCookie(w, r, p)
	}
	caddyhttp.SetVar(r.Context(), poolVarKey, p)
	caddyhttp.SetVar(r.Context(), "cbproxy_pool", p.nameVar)
	if h.ExposePool {
		w.Header()[poolHeader] = p.nameHeader
	}
	proxy := h.proxy
	if p.tls {
		proxy = h.tlsProxy
	}
	stats := p.stats
	if how == byOverride {
		stats = p.overridden
	}
	rec := newRecorder(w, r, stats, p.slowAbort)
	rec.backendMetrics = h.BackendMetrics
	if h.fast && !p.tls && fastEligible(r) {
		err := h.serveFast(rec, r, p)
		rec.finish(err, r.Context().Err() != nil)
		return err
	}
	err := proxy.ServeHTTP(rec, r, next)
	rec.finish(err, r.Context().Err() != nil)
	if err != nil {
		reportProxyError(r, p, err)
	}
	return err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)

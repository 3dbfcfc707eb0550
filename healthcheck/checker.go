// Package healthcheck is this node's view of every backend of every pool: active
// probes of each backend's health path, and passive signals (refused
// connections, 502/503/504) reported by the data plane between probes. It
// imports no Caddy package: the control plane owns a Checker, the data plane
// reads it. See DESIGN.md in this folder for the states and transitions.
package healthcheck

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap"
)

// Status is a backend's health as this node sees it.
type Status string

// Backend statuses (docs/caddyfile.md "Health checks"). Unknown and degraded
// backends still receive traffic; unhealthy ones do not.
const (
	StatusUnknown   Status = "unknown"   // not checked yet
	StatusHealthy   Status = "healthy"   // 2xx from the health path, or no active check
	StatusDegraded  Status = "degraded"  // 2xx with {"status":"degraded"}: still serving
	StatusUnhealthy Status = "unhealthy" // failed checks, or a refused connection
)

// DefaultPassiveCooldown is how long a passive failure is remembered for a
// service without an active check, like Caddy's fail_duration.
const DefaultPassiveCooldown = 10 * time.Second

// Backend is one backend's health as this node sees it.
type Backend struct {
	Status Status
	// LatencyMs is the duration of the last probe (0 if none).
	LatencyMs float64
	// LastError says why the last probe or passive signal failed; it is
	// cleared when a success leaves the backend healthy or degraded.
	LastError string
	// Checked is the time of the last probe (zero if never).
	Checked time.Time
}

// Config tunes a Checker; every field is optional.
type Config struct {
	Logger *zap.Logger
	// Client sends the probes. The default sends each probe on a new
	// connection (keep-alives off, so no idle connection per backend and
	// every probe tests that the backend still accepts connections), ignores
	// HTTP_PROXY, does not follow redirects (a 3xx is a failed check) and
	// verifies TLS backends against the system roots. A given client is used
	// as is; the probe's timeout comes from its context.
	Client *http.Client
	// Now stamps Backend.Checked; default time.Now.
	Now func() time.Time
	// PassiveCooldown is how long a passive failure is remembered for a
	// backend of a service without an active check; default
	// DefaultPassiveCooldown.
	PassiveCooldown time.Duration
}

// key names one backend of one pool of one service. The same address in two
// pools is two backends: each has its own state and probe.
type key struct {
	service, pool, address string
}

// backend is the mutable state behind one Backend. Every field is guarded by
// Checker.mu.
type backend struct {
	key
	Backend
	// fails and passes count consecutive failures and successes.
	fails, passes int
	// slot is the backend's place in its service's statuses.
	slot int
	// check is the active check in force, nil for passive only.
	check *state.HealthCheck
	// stopProbe ends the probe goroutine; probeGen tells a result of the
	// current goroutine from one of a goroutine already told to stop.
	stopProbe context.CancelFunc
	probeGen  uint64
	// cooldown forgets passive failures of a backend without active check;
	// coolGen tells the current timer from a stopped one that fired anyway.
	cooldown *time.Timer
	coolGen  uint64
}

// Checker checks the backends of every service in the replicated state. All
// methods are safe for concurrent use.
type Checker struct {
	log      *zap.Logger
	client   *http.Client
	now      func() time.Time
	cooldown time.Duration

	ctx    context.Context // canceled by Close: ends every probe
	cancel context.CancelFunc
	wg     sync.WaitGroup // probe goroutines and the notifier

	mu       sync.RWMutex
	closed   bool
	services map[string]*state.Service // as last reconciled
	// statuses holds each service's backend statuses in the order of the
	// replicated service (pools by name, then each pool's backends), kept
	// up to date by setStatusLocked through each backend's slot, so that
	// ServiceHealth copies one array instead of visiting every backend.
	statuses map[string][]BackendStatus
	// last is the view last reconciled (nil before the first): a view
	// whose Changes are relative to it only needs those services visited.
	last     *state.View
	backends map[key]*backend
	// changed is closed and replaced whenever a status changes or Update
	// changes the set of backends, to wake WaitChecked.
	changed chan struct{}

	notes notifier
}

// New returns a Checker with nothing to check yet; Update gives it the
// services. Close it to stop its goroutines.
func New(cfg Config) *Checker {
	c := &Checker{
		log:      cfg.Logger,
		client:   cfg.Client,
		now:      cfg.Now,
		cooldown: cfg.PassiveCooldown,
		services: map[string]*state.Service{},
		backends: map[key]*backend{},
		statuses: map[string][]BackendStatus{},
		changed:  make(chan struct{}),
	}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	if c.client == nil {
		c.client = defaultClient()
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.cooldown <= 0 {
		c.cooldown = DefaultPassiveCooldown
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.notes.init(c.log)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.notes.run(c.ctx)
	}()
	return c
}

// Update reconciles the checks with a new replicated view: it starts probing
// new backends, stops probing removed ones and restarts the probes of
// services whose health check changed. Services are immutable in the state,
// so a service whose pointer did not change is skipped, and when the view
// lists what it changed from the view reconciled last (state.View.Changes)
// only those services are looked at: Update costs what the change costs,
// not a walk over every service.
//
// A new backend is unknown when its service has an active check, else
// healthy. A backend that stays keeps its status across a change of its
// service's check; one that loses its active check becomes healthy.
func (c *Checker) Update(v *state.View) {
	if v == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	last := c.last
	c.last = v
	touched := false
	reconcile := func(name string) {
		old, cur := c.services[name], v.Services[name]
		if old == cur {
			return
		}
		c.reconcileLocked(name, old, cur)
		if cur == nil {
			delete(c.services, name)
			delete(c.statuses, name)
		} else {
			c.services[name] = cur
			c.statuses[name] = c.statusesLocked(name, cur)
		}
		touched = true
	}
	if ch := v.Changes; ch != nil && last != nil && last.Index == ch.Since {
		for _, name := range ch.Services {
			reconcile(name)
		}
	} else {
		for name := range c.services {
			if v.Services[name] == nil {
				reconcile(name)
			}
		}
		for name := range v.Services {
			reconcile(name)
		}
	}
	if touched {
		c.broadcastLocked()
	}
}

// reconcileLocked brings the backends of one service from old to cur (either
// may be nil).
func (c *Checker) reconcileLocked(name string, old, cur *state.Service) {
	want := backendKeys(name, cur)
	for k := range backendKeys(name, old) {
		if _, keep := want[k]; !keep {
			c.stopLocked(c.backends[k])
			delete(c.backends, k)
		}
	}
	var check *state.HealthCheck
	if cur != nil {
		check = cur.Health
	}
	for k := range want {
		e := c.backends[k]
		switch {
		case e == nil:
			e = &backend{key: k, Backend: Backend{Status: StatusHealthy}}
			if check != nil {
				e.Status = StatusUnknown
			}
			c.backends[k] = e
			c.configureLocked(e, check)
		case !sameCheck(e.check, check):
			c.configureLocked(e, check)
		}
	}
}

// statusesLocked lists the statuses of the backends of svc, reconciled, in
// its order, and tells each backend its slot in the list.
func (c *Checker) statusesLocked(name string, svc *state.Service) []BackendStatus {
	var list []BackendStatus
	for _, pool := range svc.PoolNames() {
		for _, b := range svc.Pools[pool].Backends {
			e := c.backends[key{name, pool, b.Address}]
			e.slot = len(list)
			list = append(list, BackendStatus{Pool: pool, Address: b.Address, Status: e.Status})
		}
	}
	return list
}

// BackendStatus is one backend's status in ServiceHealth's list.
type BackendStatus struct {
	Pool, Address string
	Status        Status
}

// ServiceHealth appends to dst the status of every backend of a service,
// in the order of the replicated service (pools by name, then each pool's
// backends), under one read lock and as one copy: GET /v1/services asks
// for 6,000 backends at 1,000 services, and one Get each was a third of
// its time. Nothing is appended for a service the checker does not follow;
// Get answers for each backend alike.
func (c *Checker) ServiceHealth(service string, dst []BackendStatus) []BackendStatus {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return append(dst, c.statuses[service]...)
}

// backendKeys returns the set of backends of svc (empty for nil).
func backendKeys(name string, svc *state.Service) map[key]struct{} {
	keys := map[key]struct{}{}
	if svc == nil {
		return keys
	}
	for pool, p := range svc.Pools {
		for _, b := range p.Backends {
			keys[key{name, pool, b.Address}] = struct{}{}
		}
	}
	return keys
}

func sameCheck(a, b *state.HealthCheck) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// configureLocked puts check in force for e: it stops what ran before and
// starts a probe when check is not nil. The counters start over, because
// they counted against other settings.
func (c *Checker) configureLocked(e *backend, check *state.HealthCheck) {
	c.stopLocked(e)
	e.fails, e.passes = 0, 0
	e.check = check
	if check == nil {
		// Without an active check, only passive signals can hold a
		// backend down, and none is remembered now.
		c.setStatusLocked(e, StatusHealthy)
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	e.stopProbe = cancel
	gen := e.probeGen
	c.wg.Add(1)
	go c.probeLoop(ctx, e, gen, probeURL(e.address, check.Path), *check)
}

// stopLocked ends e's probe goroutine (without waiting for it) and its
// passive cool-down.
func (c *Checker) stopLocked(e *backend) {
	if e.stopProbe != nil {
		e.stopProbe()
		e.stopProbe = nil
	}
	e.probeGen++
	if e.cooldown != nil {
		e.cooldown.Stop()
		e.cooldown = nil
	}
	e.coolGen++
}

// Get returns the health of one backend; its Status is unknown for a backend
// the checker does not know.
func (c *Checker) Get(service, pool, address string) Backend {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if e := c.backends[key{service, pool, address}]; e != nil {
		return e.Backend
	}
	return Backend{Status: StatusUnknown}
}

// ConnectionRefused reports that a backend refused a connection while
// proxying: it is unhealthy at once. With an active check, `passes`
// successful probes in a row make it healthy again; without one, it is
// healthy again after the passive cool-down.
func (c *Checker) ConnectionRefused(service, pool, address string) {
	c.passive(key{service, pool, address}, "connection refused while proxying", true)
}

// ProxyFailure reports a proxied request that failed with a transport error
// (status 0) or a 502, 503 or 504 from the backend. It counts like a failed
// probe: `fails` of them in a row, with no successful probe in between, make
// the backend unhealthy. Without an active check the default fails (2) apply
// and a failure is forgotten after the passive cool-down. Other statuses are
// the application's answers and are ignored.
func (c *Checker) ProxyFailure(service, pool, address string, status int) {
	var why string
	switch status {
	case 0:
		why = "transport error while proxying"
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		why = "proxied request answered " + statusLine(status)
	default:
		return
	}
	c.passive(key{service, pool, address}, why, false)
}

func (c *Checker) passive(k key, why string, refused bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.backends[k]
	if c.closed || e == nil {
		return
	}
	e.LastError = why
	fails := state.DefaultHealthCheck.Fails
	if e.check != nil {
		fails = e.check.Fails
	} else {
		c.armCooldownLocked(e)
	}
	if refused {
		fails = 1 // enough by itself
	}
	c.failLocked(e, fails)
}

// armCooldownLocked (re)starts the timer that forgets the passive failures
// of a backend without an active check.
func (c *Checker) armCooldownLocked(e *backend) {
	if e.cooldown != nil {
		e.cooldown.Stop()
	}
	e.coolGen++
	gen := e.coolGen
	e.cooldown = time.AfterFunc(c.cooldown, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.closed || e.coolGen != gen || c.backends[e.key] != e {
			return // stopped, re-armed or removed since
		}
		e.cooldown = nil
		e.fails = 0
		e.LastError = ""
		c.setStatusLocked(e, StatusHealthy)
	})
}

// record applies the outcome of one probe of generation gen.
func (c *Checker) record(e *backend, gen uint64, o outcome) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || e.probeGen != gen || c.backends[e.key] != e {
		return // a result of a probe that was told to stop
	}
	e.Checked = c.now()
	e.LatencyMs = float64(o.latency) / float64(time.Millisecond)
	if o.status == StatusUnhealthy {
		e.LastError = o.err
		c.failLocked(e, e.check.Fails)
		return
	}
	c.passLocked(e, o.status, e.check.Passes)
}

// failLocked counts one failure: `fails` in a row make e unhealthy.
func (c *Checker) failLocked(e *backend, fails int) {
	e.passes = 0
	if e.fails < fails {
		e.fails++
	}
	if e.fails >= fails {
		c.setStatusLocked(e, StatusUnhealthy)
	}
}

// passLocked counts one successful probe whose verdict is s (healthy or
// degraded). A serving or unknown backend takes s at once; an unhealthy one
// after `passes` successes in a row.
func (c *Checker) passLocked(e *backend, s Status, passes int) {
	e.fails = 0
	if e.Status == StatusUnhealthy {
		e.passes++
		if e.passes < passes {
			return
		}
	}
	e.passes = 0
	e.LastError = ""
	c.setStatusLocked(e, s)
}

func (c *Checker) setStatusLocked(e *backend, s Status) {
	if e.Status == s {
		return
	}
	c.log.Info("backend health changed",
		zap.String("service", e.service), zap.String("pool", e.pool), zap.String("backend", e.address),
		zap.String("from", string(e.Status)), zap.String("to", string(s)), zap.String("error", e.LastError))
	e.Status = s
	if list := c.statuses[e.service]; e.slot < len(list) && list[e.slot].Pool == e.pool && list[e.slot].Address == e.address {
		list[e.slot].Status = s
	}
	c.broadcastLocked()
	c.notes.add(e.service)
}

// broadcastLocked wakes every WaitChecked.
func (c *Checker) broadcastLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// OnChange registers fn, called with a service's name after any backend of
// that service changed status. Calls come one at a time from one goroutine
// of the checker, never while it holds a lock, so fn may call Get; fn should
// return quickly, since later notifications wait for it. Changes of a
// service that happen while its call is still queued are folded into that
// call. After cancel, fn is not called again, except for a call already
// under way.
func (c *Checker) OnChange(fn func(service string)) (cancel func()) {
	return c.notes.listen(fn)
}

// WaitChecked blocks until no backend of the pool is unknown any more, or
// ctx ends. It returns at once for a service or pool the checker does not
// know, and when the checker is closed.
func (c *Checker) WaitChecked(ctx context.Context, service, pool string) {
	for {
		c.mu.RLock()
		pending := c.uncheckedLocked(service, pool)
		changed := c.changed
		closed := c.closed
		c.mu.RUnlock()
		if !pending || closed {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func (c *Checker) uncheckedLocked(service, pool string) bool {
	svc := c.services[service]
	if svc == nil || svc.Pools[pool] == nil {
		return false
	}
	for _, b := range svc.Pools[pool].Backends {
		if e := c.backends[key{service, pool, b.Address}]; e != nil && e.Status == StatusUnknown {
			return true
		}
	}
	return false
}

// Close stops every probe and timer and waits for the checker's goroutines.
// Get keeps answering with the last statuses; Update and the passive signals
// do nothing after Close.
func (c *Checker) Close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		for _, e := range c.backends {
			c.stopLocked(e)
		}
		c.cancel()
		c.broadcastLocked()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

package state

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
)

var (
	serviceName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	poolName    = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)
)

// maxVersionLabel bounds a pool's free-text version label so that it fits a
// table column and a log line.
const maxVersionLabel = 128

// ValidateServiceName checks a service name: 1 to 63 lowercase letters,
// digits, '-' or '_', starting with a letter or digit.
func ValidateServiceName(name string) error {
	if !serviceName.MatchString(name) {
		return fmt.Errorf("service name %q is not valid: use 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit", name)
	}
	return nil
}

// ValidatePoolName checks a pool name: 1 to 32 lowercase letters, digits, '-'
// or '_', starting with a letter or digit.
func ValidatePoolName(name string) error {
	if !poolName.MatchString(name) {
		return fmt.Errorf("pool name %q is not valid: use 1 to 32 lowercase letters, digits, '-' or '_', starting with a letter or digit", name)
	}
	return nil
}

// ValidateBackend checks one backend address: host:port, [ipv6]:port,
// dns-name:port, or any of these after https:// for TLS to the backend.
func ValidateBackend(addr string) error {
	hostport, _ := strings.CutPrefix(addr, "https://")
	switch {
	case addr == "":
		return errors.New("backend address is empty; write host:port like 10.0.0.11:8765")
	case strings.ContainsFunc(addr, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return fmt.Errorf("backend %q contains a space or control character; write host:port like 10.0.0.11:8765", addr)
	case strings.Contains(hostport, "://"):
		return fmt.Errorf("backend %q has a scheme other than https://; write host:port for plain HTTP or https://host:port for TLS", addr)
	case strings.ContainsAny(hostport, "/?#"):
		return fmt.Errorf("backend %q has a path or query; give only host:port", addr)
	case strings.Contains(hostport, "@"):
		return fmt.Errorf("backend %q has user info; give only host:port", addr)
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		if strings.Count(hostport, ":") > 1 && !strings.HasPrefix(hostport, "[") {
			return fmt.Errorf("backend %q: an IPv6 address needs brackets, like [2001:db8::1]:8765", addr)
		}
		return fmt.Errorf("backend %q is not host:port; write it like 10.0.0.11:8765", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] < '1' || port[0] > '9' {
		return fmt.Errorf("backend %q: port %q is not a number from 1 to 65535", addr, port)
	}
	if strings.HasPrefix(hostport, "[") {
		if ip, err := netip.ParseAddr(host); err != nil || !ip.Is6() {
			return fmt.Errorf("backend %q: %q in brackets is not an IPv6 address", addr, host)
		}
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		return nil
	}
	if !validDNSName(host) {
		return fmt.Errorf("backend %q: host %q is neither an IP address nor a DNS name", addr, host)
	}
	return nil
}

// validDNSName accepts host names made of labels of letters, digits, '-' and
// '_' (container names use it), none starting or ending with '-'. An all-digit
// last label is refused: it is a mistyped IPv4 address, not a name.
func validDNSName(host string) bool {
	if host == "" || len(host) > 253 {
		return false
	}
	labels := strings.Split(host, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return !allDigits(labels[len(labels)-1])
}

// ValidateBackends checks the backend addresses of one pool: each must be
// valid, none may repeat, and all must use the same scheme, because a pool is
// dispatched through one transport.
func ValidateBackends(addrs []string) error {
	seen := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		if err := ValidateBackend(a); err != nil {
			return err
		}
		if seen[a] {
			return fmt.Errorf("backend %q is listed twice", a)
		}
		seen[a] = true
		if isTLS(a) != isTLS(addrs[0]) {
			return fmt.Errorf("backends %q and %q mix https:// and plain HTTP; use one scheme per pool", addrs[0], a)
		}
	}
	return nil
}

func isTLS(addr string) bool { return strings.HasPrefix(addr, "https://") }

func validateVersionLabel(label string) error {
	if len(label) > maxVersionLabel {
		return fmt.Errorf("version label is longer than %d characters", maxVersionLabel)
	}
	if strings.ContainsFunc(label, unicode.IsControl) {
		return fmt.Errorf("version label %q contains a control character", label)
	}
	return nil
}

// newPool validates a pool's name, label and backends and builds the pool with
// no backend draining.
func newPool(name, version string, addrs []string) (*Pool, error) {
	if err := ValidatePoolName(name); err != nil {
		return nil, err
	}
	if err := validateVersionLabel(version); err != nil {
		return nil, fmt.Errorf("pool %q: %w", name, err)
	}
	if err := ValidateBackends(addrs); err != nil {
		return nil, fmt.Errorf("pool %q: %w", name, err)
	}
	p := &Pool{Version: version, Backends: make([]Backend, len(addrs))}
	for i, a := range addrs {
		p.Backends[i] = Backend{Address: a}
	}
	return p, nil
}

// validate re-checks a pool that was built before (for a restored snapshot).
func (p *Pool) validate(name string) error {
	if p == nil {
		return fmt.Errorf("pool %q is empty", name)
	}
	_, err := newPool(name, p.Version, p.addresses())
	return err
}

func (p *Pool) addresses() []string {
	out := make([]string, len(p.Backends))
	for i, b := range p.Backends {
		out[i] = b.Address
	}
	return out
}

func (h HealthCheck) withDefaults() HealthCheck {
	if h.Interval == 0 {
		h.Interval = DefaultHealthCheck.Interval
	}
	if h.Timeout == 0 {
		h.Timeout = DefaultHealthCheck.Timeout
	}
	if h.Fails == 0 {
		h.Fails = DefaultHealthCheck.Fails
	}
	if h.Passes == 0 {
		h.Passes = DefaultHealthCheck.Passes
	}
	return h
}

func (h *HealthCheck) validate() error {
	switch {
	case !strings.HasPrefix(h.Path, "/"):
		return fmt.Errorf("health check path %q must start with /, like /health/ready", h.Path)
	case strings.ContainsFunc(h.Path, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return fmt.Errorf("health check path %q contains a space or control character", h.Path)
	case h.Interval <= 0:
		return fmt.Errorf("health check interval must be more than 0, not %s", h.Interval)
	case h.Timeout <= 0:
		return fmt.Errorf("health check timeout must be more than 0, not %s", h.Timeout)
	case h.Fails < 1:
		return fmt.Errorf("health check fails must be at least 1, not %d", h.Fails)
	case h.Passes < 1:
		return fmt.Errorf("health check passes must be at least 1, not %d", h.Passes)
	}
	return nil
}

// withDefaults fills every zero field from DefaultSLO. A zero error rate
// therefore means "the default", not "no errors at all".
func (s SLO) withDefaults() SLO {
	fill := func(v *float64, def float64) {
		if *v == 0 {
			*v = def
		}
	}
	fill(&s.Advance.ErrorRate, DefaultSLO.Advance.ErrorRate)
	fill(&s.Advance.P95ms, DefaultSLO.Advance.P95ms)
	fill(&s.Rollback.ErrorRate, DefaultSLO.Rollback.ErrorRate)
	fill(&s.Rollback.P95ms, DefaultSLO.Rollback.P95ms)
	if s.Window == 0 {
		s.Window = DefaultSLO.Window
	}
	if s.MinRequests == 0 {
		s.MinRequests = DefaultSLO.MinRequests
	}
	if s.Consecutive == 0 {
		s.Consecutive = DefaultSLO.Consecutive
	}
	return s
}

func (s *SLO) validate() error {
	for _, t := range []struct {
		name string
		th   Thresholds
	}{{"advance", s.Advance}, {"rollback", s.Rollback}} {
		if !(t.th.ErrorRate >= 0 && t.th.ErrorRate <= 1) {
			return fmt.Errorf("slo %s error_rate %v must be a fraction from 0 to 1 (0.01 is 1 %%)", t.name, t.th.ErrorRate)
		}
		if !(t.th.P95ms > 0) || math.IsInf(t.th.P95ms, 1) {
			return fmt.Errorf("slo %s p95_ms %v must be a number of milliseconds above 0", t.name, t.th.P95ms)
		}
	}
	switch {
	case s.Advance.ErrorRate > s.Rollback.ErrorRate:
		return fmt.Errorf("slo advance error_rate %v is above the rollback error_rate %v; a step may advance only on figures better than the rollback limits", s.Advance.ErrorRate, s.Rollback.ErrorRate)
	case s.Advance.P95ms > s.Rollback.P95ms:
		return fmt.Errorf("slo advance p95_ms %v is above the rollback p95_ms %v; a step may advance only on figures better than the rollback limits", s.Advance.P95ms, s.Rollback.P95ms)
	case s.Window <= 0:
		return fmt.Errorf("slo window must be more than 0, not %s", s.Window)
	case s.MinRequests < 1:
		return fmt.Errorf("slo min_requests must be at least 1, not %d", s.MinRequests)
	case s.Consecutive < 1:
		return fmt.Errorf("slo consecutive must be at least 1, not %d", s.Consecutive)
	}
	return nil
}

// Limits of a service definition written now, through the admin API or a
// Caddyfile. A health check every nanosecond floods the backends; a window
// longer than the five minutes of one-second samples every node keeps would
// be judged over five minutes without saying so (proxymod/windows.go).
const (
	MinHealthInterval = Duration(100 * time.Millisecond)
	MaxHealthInterval = Duration(10 * time.Minute)
	MinHealthTimeout  = Duration(10 * time.Millisecond)
	MaxHealthTimeout  = Duration(time.Minute)
	// MaxHealthCount bounds fails and passes: more would keep a dead
	// backend in traffic for hours.
	MaxHealthCount = 100
	MinSLOWindow   = Duration(time.Second)
	MaxSLOWindow   = Duration(5 * time.Minute)
)

// CheckSpec validates a service definition someone writes now: what
// NormalizeSpec checks, and the limits above. The admin API (through
// Command.Validate) and the Caddyfile use it. Apply and Restore do not check
// the limits: an entry or a snapshot that an older build accepted must apply
// the same on every node, whichever build replays it.
func CheckSpec(name string, spec ServiceSpec) error {
	s, err := NormalizeSpec(name, spec)
	if err != nil {
		return err
	}
	return s.checkLimits()
}

func (s *Service) checkLimits() error {
	if h := s.Health; h != nil {
		switch {
		case h.Interval < MinHealthInterval || h.Interval > MaxHealthInterval:
			return fmt.Errorf("health check interval %s is out of range: use %s to %s", h.Interval, MinHealthInterval, MaxHealthInterval)
		case h.Timeout < MinHealthTimeout || h.Timeout > MaxHealthTimeout:
			return fmt.Errorf("health check timeout %s is out of range: use %s to %s", h.Timeout, MinHealthTimeout, MaxHealthTimeout)
		case h.Fails > MaxHealthCount:
			return fmt.Errorf("health check fails %d is more than %d", h.Fails, MaxHealthCount)
		case h.Passes > MaxHealthCount:
			return fmt.Errorf("health check passes %d is more than %d", h.Passes, MaxHealthCount)
		}
	}
	if w := s.SLO.Window; w < MinSLOWindow || w > MaxSLOWindow {
		return fmt.Errorf("slo window %s is out of range: use %s to %s (every node keeps five minutes of one-second samples)", w, MinSLOWindow, MaxSLOWindow)
	}
	return nil
}

// NormalizeSpec validates a service definition and returns the service it
// defines with every default filled in: the SLO from DefaultSLO, the guard
// from DefaultGuard, zero health check fields from DefaultHealthCheck, and,
// when spec.Weights is empty, 100 % to the first pool in name order. The
// service has Version 0 and LKG equal to its weights; Apply sets the version
// and, when it replaces a service, decides whether earlier weights are kept
// (see the KindPutService handler). The error says what to fix.
func NormalizeSpec(name string, spec ServiceSpec) (*Service, error) {
	if err := ValidateServiceName(name); err != nil {
		return nil, err
	}
	if len(spec.Pools) == 0 {
		return nil, fmt.Errorf("service %q has no pools; define at least one pool with its backends", name)
	}
	s := &Service{Name: name, Pools: make(map[string]*Pool, len(spec.Pools))}
	for _, pn := range sortedKeys(spec.Pools) {
		p, err := newPool(pn, spec.Pools[pn].Version, spec.Pools[pn].Backends)
		if err != nil {
			return nil, err
		}
		s.Pools[pn] = p
	}
	pools := s.PoolNames()
	if len(spec.Weights) == 0 {
		s.Weights = Weights{pools[0]: Total}.Fill(pools)
	} else {
		if err := spec.Weights.Validate(pools); err != nil {
			return nil, err
		}
		s.Weights = spec.Weights.Fill(pools)
	}
	s.LKG = s.Weights
	if spec.Health != nil {
		h := spec.Health.withDefaults()
		if err := h.validate(); err != nil {
			return nil, err
		}
		s.Health = &h
	}
	if spec.SLO != nil {
		s.SLO = spec.SLO.withDefaults()
	} else {
		s.SLO = DefaultSLO
	}
	if err := s.SLO.validate(); err != nil {
		return nil, err
	}
	s.Guard = DefaultGuard
	if spec.Guard != nil {
		if *spec.Guard < 0 {
			return nil, fmt.Errorf("guard must not be negative, not %s", *spec.Guard)
		}
		s.Guard = *spec.Guard
	}
	return s, nil
}

// PoolNames returns the names of the service's pools in order.
func (s *Service) PoolNames() []string { return sortedKeys(s.Pools) }

// validate checks every invariant of a stored service; Restore uses it on
// snapshots, and tests use it after every command.
func (s *Service) validate() error {
	if err := ValidateServiceName(s.Name); err != nil {
		return err
	}
	if len(s.Pools) == 0 {
		return fmt.Errorf("service %q has no pools", s.Name)
	}
	for _, pn := range s.PoolNames() {
		if err := s.Pools[pn].validate(pn); err != nil {
			return fmt.Errorf("service %q: %w", s.Name, err)
		}
	}
	pools := s.PoolNames()
	for _, w := range []struct {
		name string
		ws   Weights
	}{{"weights", s.Weights}, {"lkg", s.LKG}} {
		if err := w.ws.Validate(pools); err != nil {
			return fmt.Errorf("service %q %s: %w", s.Name, w.name, err)
		}
		if len(w.ws) != len(pools) {
			return fmt.Errorf("service %q %s do not list every pool", s.Name, w.name)
		}
	}
	if s.Health != nil {
		if err := s.Health.validate(); err != nil {
			return fmt.Errorf("service %q: %w", s.Name, err)
		}
	}
	if err := s.SLO.validate(); err != nil {
		return fmt.Errorf("service %q: %w", s.Name, err)
	}
	if s.Guard < 0 {
		return fmt.Errorf("service %q guard is negative", s.Name)
	}
	return nil
}

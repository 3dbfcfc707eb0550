package proxymod

import (
	"errors"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Passive health: what the proxy sees between probes counts against a backend
// (docs/caddyfile.md "Health checks", passive signals). Caddy retries a failed
// attempt on another backend of the pool but does not say why it failed, so
// after a failure a short dial on the side tells a refused connection apart:
// that one makes the backend unhealthy at once, anything else counts like a
// failed probe.

// reportFailure records a failed attempt to the backend dialled at dial.
func (p *poolRoute) reportFailure(dial string, status int) {
	h := routes.health.Load()
	if h == nil {
		return
	}
	var b *backend
	for _, pb := range p.backends {
		if pb.dial == dial {
			b = pb.backend
			break
		}
	}
	if b == nil {
		return
	}
	h.ProxyFailure(p.service, p.name, b.address, status)
	if !b.dialing.CompareAndSwap(false, true) {
		return // one side dial per backend at a time, however many requests fail
	}
	service, pool := p.service, p.name
	go func() {
		defer b.dialing.Store(false)
		conn, err := net.DialTimeout("tcp", b.dial, time.Second)
		if err == nil {
			conn.Close()
			return
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			h.ConnectionRefused(service, pool, b.address)
		}
	}()
}

// reportProxyError records the last attempt of a request the proxy answered
// with an error (502, 503, 504: no backend gave a response).
func reportProxyError(r *http.Request, p *poolRoute, err error) {
	var herr caddyhttp.HandlerError
	if !errors.As(err, &herr) || herr.StatusCode < 502 || herr.StatusCode > 504 {
		return
	}
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return
	}
	if dial, _ := repl.GetString("http.reverse_proxy.upstream.hostport"); dial != "" {
		p.reportFailure(dial, herr.StatusCode)
	}
}

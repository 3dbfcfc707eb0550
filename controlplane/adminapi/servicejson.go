package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"github.com/cbproxy/cbproxy/healthcheck"
)

// GET /v1/services at 1,000 services spent most of its time in
// encoding/json reflecting over the same replicated services again (about
// 1 MB of JSON). The replicated part of a service body never changes while
// its *state.Service stays the same, so its JSON is encoded once and kept
// (serviceJSONCache); each call appends only what is this node's and of the
// moment: each backend's health, in-flight and long-lived counts, and the
// verdict of an active rollout. The bytes are exactly json.Marshal's of
// render (TestServiceJSONMatchesRender).

// serviceJSON is the encoded replicated part of one service body, in the
// order encoding/json writes serviceBody.
type serviceJSON struct {
	head  []byte // `{"name":…,"lkg":…,"pools":{`
	pools []poolJSON
	tail  []byte // `},"health":…,"guard":…,"rollout":`
}

type poolJSON struct {
	name     string
	head     []byte // `"blue":{"version":"…","backends":[`
	backends []backendJSON
}

type backendJSON struct {
	address  string
	quoted   []byte // the address as a JSON string
	draining bool
}

func encodeServiceJSON(s *state.Service) (*serviceJSON, error) {
	body := serviceBody{Name: s.Name, Version: s.Version, Weights: s.Weights, LKG: s.LKG, Health: s.Health, SLO: s.SLO, Guard: s.Guard}
	raw, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	// Pools and Rollout are nil: they encode as null, at the places the
	// appended parts go. Pool names and the service name never hold a
	// quote, so the first `"pools":null` is the field.
	const poolsNull, rolloutNull = `"pools":null`, `null}`
	i := bytes.Index(raw, []byte(poolsNull))
	if i < 0 || !bytes.HasSuffix(raw, []byte(`"rollout":`+rolloutNull)) {
		return nil, fmt.Errorf("service %q: unexpected JSON %s", s.Name, raw)
	}
	sj := &serviceJSON{
		head: append(slices.Clip(raw[:i+len(`"pools":`)]), '{'),
		tail: append([]byte{'}'}, raw[i+len(poolsNull):len(raw)-len(rolloutNull)]...),
	}
	names := make([]string, 0, len(s.Pools))
	for name := range s.Pools {
		names = append(names, name)
	}
	slices.Sort(names) // encoding/json's order of map keys
	for _, name := range names {
		p := s.Pools[name]
		key, err := json.Marshal(name)
		if err != nil {
			return nil, err
		}
		pb, err := json.Marshal(poolBody{Version: p.Version, Backends: []backendBody{}})
		if err != nil {
			return nil, err
		}
		pj := poolJSON{name: name, head: append(append(key, ':'), pb[:len(pb)-len(`]}`)]...)}
		for _, be := range p.Backends {
			quoted, err := json.Marshal(be.Address)
			if err != nil {
				return nil, err
			}
			pj.backends = append(pj.backends, backendJSON{address: be.Address, quoted: quoted, draining: be.Draining})
		}
		sj.pools = append(sj.pools, pj)
	}
	return sj, nil
}

// serviceJSONCache keeps the encoded replicated part of the services of the
// last view listed; services gone from the view leave it at the next list.
type serviceJSONCache struct {
	mu        sync.Mutex
	byService map[*state.Service]*serviceJSON
}

// get returns the encoded parts of every service of v in names' order.
func (c *serviceJSONCache) get(v *state.View, names []string) ([]*serviceJSON, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := make(map[*state.Service]*serviceJSON, len(names))
	out := make([]*serviceJSON, len(names))
	for i, name := range names {
		s := v.Services[name]
		sj := c.byService[s]
		if sj == nil {
			var err error
			if sj, err = encodeServiceJSON(s); err != nil {
				return nil, err
			}
		}
		next[s], out[i] = sj, sj
	}
	c.byService = next
	return out, nil
}

// serviceFigures are the per-backend figures of the moment of one
// service, asked for in one call each where the health checker and the
// data plane answer so (ServiceHealth, ServiceLoads), kept for the next
// service of a list.
type serviceFigures struct {
	health []healthcheck.BackendStatus
	loads  []BackendLoad
}

// appendService appends the JSON of render(ctx, s) to dst, from the
// service's encoded parts and this node's figures of the moment; figs, if
// not nil, is reused from service to service.
func (a *Server) appendService(ctx context.Context, dst []byte, s *state.Service, sj *serviceJSON, dp Loads, figs *serviceFigures) ([]byte, error) {
	if figs == nil {
		figs = &serviceFigures{}
	}
	figs.health, figs.loads = figs.health[:0], figs.loads[:0]
	if h, ok := a.Health.(ServiceHealth); ok {
		figs.health = h.ServiceHealth(s.Name, figs.health)
	}
	if l, ok := dp.(ServiceLoads); ok {
		figs.loads = l.ServiceLoads(s.Name, figs.loads)
	}
	k := 0 // the backend's place in the service's order
	dst = append(dst, sj.head...)
	for i, p := range sj.pools {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, p.head...)
		for j, be := range p.backends {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"address":`...)
			dst = append(dst, be.quoted...)
			dst = append(dst, `,"health":`...)
			var health healthcheck.Status
			if k < len(figs.health) && figs.health[k].Pool == p.name && figs.health[k].Address == be.address {
				health = figs.health[k].Status
			} else {
				health = a.Health.Get(s.Name, p.name, be.address).Status
			}
			dst = appendStatus(dst, health)
			dst = append(dst, `,"draining":`...)
			dst = strconv.AppendBool(dst, be.draining)
			var inFlight, longLived int64
			switch {
			case k < len(figs.loads) && figs.loads[k].Pool == p.name && figs.loads[k].Address == be.address:
				inFlight, longLived = figs.loads[k].InFlight, figs.loads[k].LongLived
			case dp != nil:
				inFlight, longLived = dp.InFlight(s.Name, p.name, be.address), dp.LongLived(s.Name, p.name, be.address)
			}
			k++
			dst = append(dst, `,"in_flight":`...)
			dst = strconv.AppendInt(dst, inFlight, 10)
			dst = append(dst, `,"long_lived":`...)
			dst = strconv.AppendInt(dst, longLived, 10)
			dst = append(dst, '}')
		}
		dst = append(dst, "]}"...)
	}
	dst = append(dst, sj.tail...)
	if !s.Rollout.Active() {
		return append(dst, "null}"...), nil
	}
	rb, err := json.Marshal(&rolloutBody{Rollout: s.Rollout, Service: s.Name, Verdict: a.Verdicts.Verdict(ctx, s.Name)})
	if err != nil {
		return nil, err
	}
	return append(append(dst, rb...), '}'), nil
}

// appendStatus appends a health status as a JSON string.
func appendStatus(dst []byte, st healthcheck.Status) []byte {
	for _, c := range []byte(st) {
		if c < 'a' || c > 'z' {
			b, _ := json.Marshal(string(st))
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, st...)
	return append(dst, '"')
}

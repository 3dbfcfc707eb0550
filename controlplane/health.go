package controlplane

import (
	"net/http"

	"github.com/hashicorp/raft"
)

// The /health endpoints need no token (CONTRACT §6): orchestrators and load
// balancers probe them.

func (a *adminServer) healthLive(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

type dependency struct {
	Status    string   `json:"status"`
	State     string   `json:"state,omitempty"`
	Leader    string   `json:"leader,omitempty"`
	Applied   uint64   `json:"applied_index,omitempty"`
	LatencyMs *float64 `json:"latency_ms,omitempty"`
	Error     string   `json:"error,omitempty"`
	InFlight  *int64   `json:"in_flight,omitempty"`
	LongLived *int64   `json:"long_lived,omitempty"`
	Draining  bool     `json:"draining,omitempty"`
}

// raftDependency is healthy with a known leader, degraded without one (the
// data plane keeps serving the last weights), unhealthy once the state
// machine halted. Its applied index is the state machine's, which a halted
// node never moves past the entry it cannot apply.
func (n *Node) raftDependency() dependency {
	_, leader := n.raft.LeaderWithID()
	d := dependency{Status: "healthy", State: stateName(n.raft.State()), Leader: string(leader), Applied: n.View().Index}
	if leader == "" || n.raft.State() == raft.Shutdown {
		d.Status = "degraded"
	}
	if h := n.fsm.halt(); h != nil {
		d.Status, d.State, d.Error = "unhealthy", "halted", h.String()
	}
	return d
}

// dependencies lists raft and every backend as this node sees it, keyed
// "service/pool/address" (CONTRACT §6).
func (n *Node) dependencies() map[string]dependency {
	deps := map[string]dependency{"raft": n.raftDependency()}
	dp := n.dataPlane()
	for name, s := range n.View().Services {
		for pname, p := range s.Pools {
			for _, be := range p.Backends {
				h := n.health.Get(name, pname, be.Address)
				var in, long int64
				if dp != nil {
					in, long = dp.InFlight(name, pname, be.Address), dp.LongLived(name, pname, be.Address)
				}
				d := dependency{Status: string(h.Status), InFlight: &in, LongLived: &long, Draining: be.Draining, Error: h.LastError}
				if !h.Checked.IsZero() {
					ms := h.LatencyMs
					d.LatencyMs = &ms
				}
				deps[name+"/"+pname+"/"+be.Address] = d
			}
		}
	}
	return deps
}

// overall is the worst of the dependencies: any unhealthy or degraded one makes
// the whole degraded; unknown backends (not checked yet) do not.
func overall(deps map[string]dependency) string {
	for _, d := range deps {
		if d.Status == "unhealthy" || d.Status == "degraded" {
			return "degraded"
		}
	}
	return "healthy"
}

func (a *adminServer) healthReady(w http.ResponseWriter, r *http.Request) {
	deps := a.n.dependencies()
	if !a.n.Ready() {
		status := "starting"
		if a.n.fsm.halt() != nil {
			status = "halted"
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": status, "dependencies": deps, "waiting_for": a.n.waitingFor()})
		return
	}
	status := "ok"
	if overall(deps) != "healthy" {
		status = "degraded"
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": status, "dependencies": deps})
}

func (a *adminServer) healthDeps(w http.ResponseWriter, r *http.Request) {
	deps := a.n.dependencies()
	status := overall(deps)
	if deps["raft"].State == "shutdown" || deps["raft"].Status == "unhealthy" {
		status = "unhealthy"
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": status, "dependencies": deps})
}

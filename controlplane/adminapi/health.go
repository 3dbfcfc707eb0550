package adminapi

import (
	"net/http"

	"github.com/cbproxy/cbproxy/controlplane/raftnode"
)

// The /health endpoints need no token (docs/api.md "Health"): orchestrators and load
// balancers probe them.

func (a *Server) healthLive(w http.ResponseWriter, r *http.Request) {
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
func raftDependency(st raftnode.Status) dependency {
	d := dependency{Status: "healthy", State: st.State, Leader: st.Leader, Applied: st.Applied}
	if st.Leader == "" || st.State == "shutdown" {
		d.Status = "degraded"
	}
	if h := st.Halted; h != nil {
		d.Status, d.State, d.Error = "unhealthy", "halted", h.String()
	}
	return d
}

// dependencies lists raft and every backend as this node sees it, keyed
// "service/pool/address" (docs/api.md "Health").
func (a *Server) dependencies() map[string]dependency {
	deps := map[string]dependency{"raft": raftDependency(a.Node.Status())}
	dp := a.loads()
	for name, s := range a.Node.View().Services {
		for pname, p := range s.Pools {
			for _, be := range p.Backends {
				h := a.Health.Get(name, pname, be.Address)
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

func (a *Server) healthReady(w http.ResponseWriter, r *http.Request) {
	deps := a.dependencies()
	if !a.Readiness.Ready() {
		status := "starting"
		if a.Node.Status().Halted != nil {
			status = "halted"
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": status, "dependencies": deps, "waiting_for": a.Readiness.WaitingFor()})
		return
	}
	status := "ok"
	if overall(deps) != "healthy" {
		status = "degraded"
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": status, "dependencies": deps})
}

func (a *Server) healthDeps(w http.ResponseWriter, r *http.Request) {
	deps := a.dependencies()
	status := overall(deps)
	if deps["raft"].State == "shutdown" || deps["raft"].Status == "unhealthy" {
		status = "unhealthy"
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": status, "dependencies": deps})
}

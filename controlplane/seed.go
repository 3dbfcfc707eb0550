package controlplane

import (
	"context"
	"time"

	"github.com/cbproxy/cbproxy/controlplane/state"
	"go.uber.org/zap"
)

// Seed asks the cluster to create a service from a Caddyfile block if the
// cluster has never seen that name. It returns at once and retries in the
// background until the seed is committed or the node shuts down. The
// idempotency key is derived from the spec, so every node of a cluster seeding
// the same block commits it once.
func (n *Node) Seed(name string, spec state.ServiceSpec) {
	if v := n.View(); v.Services[name] != nil || v.Deleted[name] != 0 {
		return
	}
	cmd := state.NewCommand(name, "seed", state.PutService{Spec: &spec, Seed: true})
	cmd.Reason = "seeded from the Caddyfile"
	data, err := state.Encode(cmd)
	if err != nil {
		n.log().Error("encoding seed", zap.String("service", name), zap.Error(err))
		return
	}
	cmd.IdemKey = "seed:" + name + ":" + state.Digest(data)
	cmd.IdemHash = cmd.IdemKey
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for {
			a, err := n.raft.Propose(context.Background(), cmd)
			if err == nil {
				if !a.Result.OK() {
					n.seedErrors.Store(name, a.Result.Err)
					n.log().Error("seed refused", zap.String("service", name), zap.String("error", a.Result.Err))
				} else if a.Result.Changed {
					n.log().Info("seeded service from the Caddyfile", zap.String("service", name), zap.Uint64("version", a.Result.Version))
				}
				return
			}
			select {
			case <-n.done:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
}

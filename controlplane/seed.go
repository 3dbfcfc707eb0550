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
	n.seed("seed:"+name, zap.String("service", name), cmd, func(err string) { n.seedErrors.Store(name, err) })
}

// SeedNotifier asks the cluster to create a notifier from a Caddyfile
// `notify` if the cluster has never seen its name, as Seed does a service.
// A refusal is logged (readiness does not wait for notifiers).
func (n *Node) SeedNotifier(name string, spec state.NotifierSpec) {
	if v := n.View(); v.Notifiers[name] != nil || v.NotifiersDeleted[name] != 0 {
		return
	}
	cmd := state.NewCommand("", "seed", state.PutNotifier{Notifier: name, Spec: &spec, Seed: true})
	n.seed("seed-notifier:"+name, zap.String("notifier", name), cmd, nil)
}

// seed proposes a seed command in the background, retrying every 500 ms
// until it is committed or the node shuts down. Its idempotency key is
// keyPrefix and the digest of the encoded command, so every node of a
// cluster seeding the same block commits it once. refused, if set, keeps a
// refusal for readiness.
func (n *Node) seed(keyPrefix string, what zap.Field, cmd state.Command, refused func(string)) {
	data, err := state.Encode(cmd)
	if err != nil {
		n.log().Error("encoding seed", what, zap.Error(err))
		return
	}
	cmd.IdemKey = keyPrefix + ":" + state.Digest(data)
	cmd.IdemHash = cmd.IdemKey
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for {
			a, err := n.raft.Propose(context.Background(), cmd)
			if err == nil {
				if !a.Result.OK() {
					if refused != nil {
						refused(a.Result.Err)
					}
					n.log().Error("seed refused", what, zap.String("error", a.Result.Err))
				} else if a.Result.Changed {
					n.log().Info("seeded from the Caddyfile", what, zap.Uint64("version", a.Result.Version))
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

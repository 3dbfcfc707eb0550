package controlplane

import (
	"context"

	"github.com/cbproxy/cbproxy/controlplane/raftnode"
)

// RecoverOptions say how Recover runs (raftnode.RecoverOptions).
type RecoverOptions = raftnode.RecoverOptions

// RecoverReport is what Recover found, planned and did (raftnode.RecoverReport).
type RecoverReport = raftnode.RecoverReport

// Recover turns a stopped node whose cluster lost its quorum for good into a
// one-node cluster that keeps its whole state (raftnode.Recover; docs/
// operations.md, "Recovering from quorum loss"). cfg is the node's
// configuration as its Caddyfile gives it.
func Recover(ctx context.Context, cfg Config, o RecoverOptions) error {
	if cfg.ClusterListen == "" {
		cfg.ClusterListen = DefaultClusterListen
	}
	return raftnode.Recover(ctx, cfg.raftConfig(), o)
}

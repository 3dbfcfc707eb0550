package cli

import (
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// TestEveryCommandRegisteredWithCaddy: every top-level word of the CLI is a
// command of the binary (Caddy's command list), with its short help, whichever
// file of the package declares it.
func TestEveryCommandRegisteredWithCaddy(t *testing.T) {
	registered := caddycmd.Commands()
	for _, name := range topLevelNames() {
		c, ok := registered[name]
		if !ok {
			t.Errorf("%q is a CLI command but not registered with Caddy: `cbproxy %s` says unknown command", name, name)
			continue
		}
		if c.Short == "" {
			t.Errorf("%q has no short help in `cbproxy help`", name)
		}
	}
}

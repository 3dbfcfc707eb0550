// Command cbproxy is Caddy with the cbproxy modules compiled in: every Caddy
// command works as in Caddy, and the cbproxy client commands (status, weights,
// switch, pool, events, cluster) drive a cluster through its admin API.
package main

import (
	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/cbproxy/cbproxy/cmd/cbproxy/cli"
	_ "github.com/cbproxy/cbproxy/proxymod"
)

func main() {
	caddy.CustomBinaryName = "cbproxy"
	caddycmd.Main()
}

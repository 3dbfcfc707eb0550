package controlplane

import (
	"time"

	"github.com/cbproxy/cbproxy/controlplane/slo"
)

// idlePlane is a data plane with no traffic and no load that declares no
// service and routes every one. The tests' data planes embed it and say only
// what their test is about.
type idlePlane struct{}

func (idlePlane) InFlight(string, string, string) int64           { return 0 }
func (idlePlane) LongLived(string, string, string) int64          { return 0 }
func (idlePlane) Window(string, string, time.Duration) slo.Window { return slo.Window{} }
func (idlePlane) Declared() []string                              { return nil }
func (idlePlane) Routes(string) bool                              { return true }

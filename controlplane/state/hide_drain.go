//go:build cbproxy_hide_drain

package state

// Built with -tags cbproxy_hide_drain, cbproxy lacks the set_drain kind as a
// build from before it existed would: it neither advertises nor applies it
// (it still knows its name, for its messages). The end-to-end tests run such
// a build next to a full one to check a mixed-version cluster and a rolling
// upgrade. Never ship it.
func init() { builtWithout = append(builtWithout, KindSetDrain) }

// Package partition lets tests cut cluster transports off from each other,
// as a network partition would, without that power being part of package
// cluster's API: only packages under controlplane can import it, and no
// production code calls it.
package partition

// Cutter cuts one node's cluster transport off from peers, named by their
// advertised cluster addresses: every connection with a blocked peer (Raft
// and RPC, both directions, pooled ones too) is closed, dials to it and
// connections from it are refused. Blocking on both sides mirrors a real
// cut.
type Cutter interface {
	Block(peer string)
	Unblock(peer string)
	UnblockAll()
}

// Of returns the Cutter of a *cluster.Transport; any other argument panics.
// Package cluster sets it when it is initialised: it cannot be typed here,
// as package cluster imports this one.
var Of func(transport any) Cutter

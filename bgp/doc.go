// Package bgp is tabby's BGP speaker: GoBGP v3 running inside tabbyd (SPEC §7).
//
// It has two halves. The pure half turns a datastore snapshot into what the speaker should
// be doing: Config computes the router identity and the peers (the node-to-node mesh, route
// reflectors, BGPPeer resources, passwords read from the secrets directory) and
// Advertisements computes the prefixes this node originates. Both are plain functions, tested
// by tables.
//
// The other half is the Speaker, the one reconciler that owns the GoBGP server. Producers
// call Set with the complete desired state; a single goroutine (Run) coalesces, diffs against
// what it applied, applies through GoBGP's API and retries failures. It reports peer status
// in BIRD's words (for `tabbyctl node status` and readiness) and the best paths it learned
// for prefixes outside every pool (the routing package installs those in the kernel).
//
// Graceful restart: a tabbyd that stops for any reason other than a deliberate Stop(ctx,
// false) never sends a Cease, and a marker file in the run directory tells the next tabbyd
// that it is restarting, so peers keep its routes while it comes back.
package bgp

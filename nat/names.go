// Package nat programs tabby's NAT outgoing dataplane (SPEC §6): two hash:net ipsets of pool
// CIDRs kept through netlink, and the iptables chains that masquerade traffic leaving the
// pools, kept through iptables-save/iptables-restore of whichever iptables backend
// (nf_tables or legacy) the host uses.
//
// The names mirror Calico's (cali40masq-ipam-pools → tabby40masq-ipam-pools,
// cali-nat-outgoing → tabby-nat-outgoing) so that an operator who knows Calico finds the
// same objects in the same places.
//
// One reconciler (NAT) owns all of it: producers call Set with a complete desired state and
// the reconciler's single goroutine (Run) diffs the kernel against it, applies the difference
// without ever leaving a window where a wanted rule is missing, and re-checks periodically
// to restore what someone else removed.
package nat

// Names of the kernel objects tabby owns. Everything named with ChainPrefix in an iptables
// table, every rule carrying a CommentPrefix comment, and the ipsets below are tabby's; Cleanup
// removes exactly these.
const (
	// MasqSetName holds the CIDRs of the pools with natOutgoing.
	MasqSetName = "tabby40masq-ipam-pools"
	// AllSetName holds the CIDRs of every pool, disabled ones included: traffic between
	// pools is never masqueraded.
	AllSetName = "tabby40all-ipam-pools"
	// tmpSetName is the scratch set used to replace a set of the wrong type in place
	// (build the right one aside, then swap), so the rules referring to it keep working.
	tmpSetName = "tabby40tmp-ipam-pools"

	// ChainPostrouting is jumped to from the first rule of nat POSTROUTING.
	ChainPostrouting = "tabby-POSTROUTING"
	// ChainNATOutgoing holds the MASQUERADE rule for pools with natOutgoing; it is empty
	// when no pool has natOutgoing.
	ChainNATOutgoing = "tabby-nat-outgoing"
	// ChainForward accepts pool traffic in filter FORWARD on hosts whose FORWARD policy is
	// DROP (docker sets it so).
	ChainForward = "tabby-FORWARD"

	// ChainPrefix marks every iptables chain tabby owns.
	ChainPrefix = "tabby-"
	// CommentPrefix starts the comment every tabby rule carries ("tabby:<id>").
	CommentPrefix = "tabby:"

	// probeChain is a scratch chain used once at start to try --random-fully on this
	// kernel and iptables.
	probeChain = "tabby-probe"

	// IPIPDevice and VXLANDevice are the tunnel devices tabby's routing creates (SPEC §5).
	IPIPDevice  = "tunl0"
	VXLANDevice = "vxlan.tabby"
)

// iptables tables tabby writes to.
const (
	tableNAT    = "nat"
	tableFilter = "filter"
)

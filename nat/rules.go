package nat

import (
	"crypto/sha256"
	"encoding/base64"
	"strings"
)

// rule is one iptables rule tabby wants, in the canonical form iptables-save prints, so that
// what tabby writes and what it reads back compare as text.
type rule struct {
	// id is the rule's comment after "tabby:": a hash of the chain and the rule's text, as
	// Calico's "cali:<hash>" comments are. A rule whose content changes gets a new id, so the
	// id alone tells whether a rule found in the kernel is the one wanted.
	id string
	// spec is the rule without "-A <chain>", comment included.
	spec string
}

// newRule builds a rule of chain from its leading basic matches (such as "-o tunl0", which
// iptables-save prints before any -m match) and the rest of it, and inserts the comment
// between them where iptables-save prints it.
func newRule(chain, basic, rest string) rule {
	sum := sha256.Sum256([]byte(chain + "\x00" + basic + "\x00" + rest))
	id := base64.RawURLEncoding.EncodeToString(sum[:12])
	parts := make([]string, 0, 3)
	if basic != "" {
		parts = append(parts, basic)
	}
	parts = append(parts, `-m comment --comment "`+CommentPrefix+id+`"`, rest)
	return rule{id: id, spec: strings.Join(parts, " ")}
}

// chainSpec is one chain tabby owns and the exact rules it should hold, in order.
type chainSpec struct {
	name  string
	rules []rule
}

// hookSpec is the rule that sends traffic from a built-in chain into tabby's chain.
type hookSpec struct {
	chain string
	rule  rule
	// first requires the rule to be the chain's first: nat POSTROUTING, so no other SNAT
	// rule (a docker MASQUERADE, say) decides pool traffic before tabby does.
	first bool
}

// tableSpec is everything tabby wants in one iptables table.
type tableSpec struct {
	table string
	// chains are tabby's chains in this table, in the order iptables-save lists them (by
	// name), so that both backends print the same text.
	chains []chainSpec
	hooks  []hookSpec
}

// features are what this host's iptables and kernel can do.
type features struct {
	// randomFully is MASQUERADE --random-fully (iptables ≥ 1.6.2 and kernel support): it
	// picks source ports at random, avoiding the port collisions of plain MASQUERADE under
	// many parallel connections, which is why Calico uses it where it can.
	randomFully bool
}

func (f features) masquerade() string {
	if f.randomFully {
		return "-j MASQUERADE --random-fully"
	}
	return "-j MASQUERADE"
}

// natTable is tabby's part of the nat table for d (normalized): SPEC §6.
func natTable(d Desired, f features) tableSpec {
	var outgoing []rule
	if len(d.MasqPools) > 0 {
		outgoing = append(outgoing, newRule(ChainNATOutgoing, "",
			"-m set --match-set "+MasqSetName+" src -m set ! --match-set "+AllSetName+" dst "+f.masquerade()))
	}
	post := []rule{newRule(ChainPostrouting, "", "-j "+ChainNATOutgoing)}
	for _, dev := range d.TunnelDevices {
		// Felix's rule: traffic leaving the tunnel whose source is a host address, but not an
		// address of the tunnel device itself, gets the tunnel's address. Without it the
		// remote host would answer to, say, eth0's address over the underlay, and the tunnel
		// peer would drop the packet as not coming from a tunnel endpoint.
		post = append(post, newRule(ChainPostrouting, "-o "+dev,
			"-m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL "+f.masquerade()))
	}
	return tableSpec{
		table: tableNAT,
		chains: []chainSpec{
			{name: ChainPostrouting, rules: post},
			{name: ChainNATOutgoing, rules: outgoing},
		},
		hooks: []hookSpec{{
			chain: "POSTROUTING",
			rule:  newRule("POSTROUTING", "", "-j "+ChainPostrouting),
			first: true,
		}},
	}
}

// filterTable is tabby's part of the filter table: nothing where the FORWARD policy accepts,
// and a chain accepting traffic from and to the pools where it drops (docker's hosts), so
// that routing workloads does not depend on the host's firewall defaults. The jump is put
// first when tabby adds it, but not forced to stay first: a rule that something else puts
// before it (docker's DOCKER-USER, where operators restrict forwarding) is respected.
func filterTable(forwardDrop bool) tableSpec {
	spec := tableSpec{table: tableFilter}
	if !forwardDrop {
		return spec
	}
	spec.chains = []chainSpec{{name: ChainForward, rules: []rule{
		newRule(ChainForward, "", "-m set --match-set "+AllSetName+" src -j ACCEPT"),
		newRule(ChainForward, "", "-m set --match-set "+AllSetName+" dst -j ACCEPT"),
	}}}
	spec.hooks = []hookSpec{{chain: "FORWARD", rule: newRule("FORWARD", "", "-j "+ChainForward)}}
	return spec
}

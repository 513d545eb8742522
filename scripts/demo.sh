#!/usr/bin/env bash
# scripts/demo.sh — the story of the Calico articles (../shared/articles), told by tabby on
# this machine: the articles' four hosts in two subnets, a router and an outside host, made
# of network namespaces by tabbylab, with a real etcd, a tabbyd per host and pod-1..3 made
# by tabby-cni. It walks through the routing modes (route table of worker-1 and the ping
# matrix for each), Direct failing across subnets and its two fixes, the failures the
# articles met on AWS (with `tabbyctl node diagnose` naming them), NAT outgoing, and BGP.
#
# `make demo` runs it after `make deps build`. Needs root. Everything happens inside the
# lab's namespaces (prefix tabbydemo); the lab is torn down on exit, whatever happens, and
# any leftover of an earlier run is removed first. Exits non-zero when a step that must work
# does not (a ping that must pass fails, or one that must fail passes, say).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$root/bin}
PREFIX=${DEMO_PREFIX:-tabbydemo}

[[ $EUID -eq 0 ]] || {
	echo "demo: needs root (network namespaces)" >&2
	exit 1
}
for b in tabbylab tabbyd tabbyctl tabby-cni; do
	[[ -x $BIN/$b ]] || {
		echo "demo: $BIN/$b missing: run make build" >&2
		exit 1
	}
done

tabbylab() { "$BIN/tabbylab" --prefix "$PREFIX" "$@"; }

teardown() {
	local rc=$?
	trap - EXIT INT TERM
	echo
	if tabbylab down >/dev/null 2>&1; then
		echo "lab $PREFIX torn down (no namespace, no process left)"
	else
		echo "demo: tearing the lab down failed: run \`$BIN/tabbylab --prefix $PREFIX down\`" >&2
		rc=1
	fi
	if ((rc != 0)); then
		echo "demo: FAILED (exit $rc) after ${SECONDS}s" >&2
	fi
	exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# Bold chapter titles on a terminal only, so that a saved transcript stays plain text.
if [[ -t 1 ]]; then
	bold=$'\033[1m' plain=$'\033[0m'
else
	bold='' plain=''
fi
chapters=0
chapter() {
	chapters=$((chapters + 1))
	printf '\n%s==== %d. %s%s\n' "$bold" "$chapters" "$*" "$plain"
}
say() { printf '%s\n' "$*"; }
# show prints a command as a transcript line, then runs it; its failure fails the demo.
show() {
	printf '\n$ %s\n' "$*"
	"$@"
}
# show_problem runs a command that must report a problem with exit code 1 (node diagnose,
# a ping matrix checked by --expect-fail exits 0 instead).
show_problem() {
	printf '\n$ %s\n' "$*"
	local rc=0
	"$@" || rc=$?
	if ((rc != 1)); then
		echo "demo: expected \`$*\` to report a problem (exit 1), got exit $rc" >&2
		exit 1
	fi
}
# wait_status waits until `tabbylab status` shows (or, with !, stops showing) a text.
wait_status() {
	local want=$1 text=$2 timeout=$3 out
	local deadline=$((SECONDS + timeout))
	while ((SECONDS < deadline)); do
		out=$(tabbylab status 2>&1 || true)
		if [[ $want == yes && $out == *"$text"* ]] || [[ $want == no && $out != *"$text"* ]]; then
			return 0
		fi
		sleep 1
	done
	echo "demo: tabbylab status did not $([[ $want == yes ]] || echo 'stop ')show \"$text\" within ${timeout}s:" >&2
	echo "$out" >&2
	exit 1
}

# Leftovers of an earlier run (crashed or interrupted) go first.
tabbylab down >/dev/null

has_ipip=yes
tabbylab has-ipip >/dev/null 2>&1 || has_ipip=no

chapter "The articles' cluster: master, worker-1, worker-2 in 10.30.0.0/24, worker-3 in 10.30.1.0/24"
say "One etcd (in the router's namespace) is the only shared state; every host runs tabbyd;"
say "pod-1..3 are plugged in by tabby-cni. The router forwards only what it has routes for,"
say "as a VPC router does, and the outside host knows only the hosts' network."
if [[ $has_ipip == yes ]]; then
	first=ipip
else
	first=direct
	say
	say "this kernel has no ipip support: skipping the IP-in-IP modes (make test-vm runs them in a VM)"
fi
show tabbylab up --mode "$first"
show tabbylab ctl master node status
show tabbylab ctl master ipam show --show-blocks

if [[ $has_ipip == yes ]]; then
	chapter "IP-in-IP (ipipMode: Always), Calico's default"
	say "Every other node's block goes through tunl0 to that node's address."
	show tabbylab routes worker-1
	show tabbylab ping
	say
	say "AWS's security groups do not let IP protocol 4 through unless told to:"
	show tabbylab fault ipip-proto on
	show tabbylab ping --expect-fail pod-1,pod-2,pod-3
	show_problem tabbylab ctl worker-1 node diagnose
	show tabbylab fault ipip-proto off
	show tabbylab ping
fi

chapter "Direct (ipipMode: Never): unencapsulated"
say "(tabbylab mode does what the articles do with calicoctl: tabbyctl patch ippool"
say " default-ipv4-ippool -p '{\"spec\":{\"ipipMode\":\"Never\",\"vxlanMode\":\"Never\"}}', then waits"
say " until every host's routes match the datastore.)"
show tabbylab mode direct
say "worker-2's block goes straight to worker-2; worker-3 is in the other subnet, so its"
say "block goes to the gateway 10.30.0.1, which has never heard of it:"
show tabbylab routes worker-1
show tabbylab ping --expect-fail pod-3
say "node diagnose on worker-1 finds out why:"
show_problem tabbylab ctl worker-1 node diagnose

chapter "The AWS source/destination check"
say "EC2 drops packets whose source or destination is not an instance's address: in Direct"
say "mode that is every pod packet, even inside one subnet."
show tabbylab fault srcdst-check on
show tabbylab ping --expect-fail pod-1,pod-2,pod-3
show_problem tabbylab ctl worker-1 node diagnose
show tabbylab fault srcdst-check off

if [[ $has_ipip == yes ]]; then
	chapter "Fix 1: CrossSubnet (ipipMode: CrossSubnet)"
	say "Direct inside a subnet, IP-in-IP across: only worker-3's block goes through tunl0."
	show tabbylab mode crosssubnet
else
	chapter "Fix 1: CrossSubnet, with VXLAN (vxlanMode: CrossSubnet) since this kernel has no ipip"
	say "Direct inside a subnet, VXLAN across: only worker-3's block goes through vxlan.tabby."
	show tabbylab mode vxlan-crosssubnet
fi
show tabbylab routes worker-1
show tabbylab ping

chapter "Fix 2: Direct, and a router that learns the blocks over BGP"
say "BIRD2 on the router peers with every host (BGPPeer resources, eBGP AS 64513); the hosts"
say "advertise their blocks, so the router can forward pod packets between the subnets."
show tabbylab mode direct
show tabbylab bird on
show tabbylab bird show
show tabbylab ping
show tabbylab bird off

chapter "VXLAN (vxlanMode: Always)"
show tabbylab mode vxlan
show tabbylab routes worker-1
show tabbylab ping
say
say "A security group without UDP 4789:"
show tabbylab fault vxlan-port on
show tabbylab ping --expect-fail pod-1,pod-2,pod-3
show_problem tabbylab ctl worker-1 node diagnose
show tabbylab fault vxlan-port off
show tabbylab ping
say
say "A fabric that carries smaller frames than the hosts' NICs claim: small pings pass,"
say "full-size packets vanish without an ICMP error."
show tabbylab fault mtu on
show tabbylab ping
show_problem tabbylab ctl worker-1 node diagnose --probe-timeout 1s
show tabbylab fault mtu off

chapter "BGP's TCP 179 closed"
say "The articles' calico-node turned unready with \"BGP not established with …\"; so does"
say "tabbyd once the hold time (9s in the lab) passes without a keepalive:"
show tabbylab fault bgp-port on
wait_status yes "BGP not established with" 90
show tabbylab status
show tabbylab ctl master node status
show tabbylab fault bgp-port off
wait_status no "NOT READY" 90
show tabbylab ctl master node status

chapter "NAT outgoing"
say "natOutgoing: true masquerades pod traffic leaving the pools, so the outside host, which"
say "knows only the hosts' network, sees a host's address and can answer:"
show tabbylab ping --outside
show tabbylab nat off
say "Without it the outside host sees the pod's own address and has no route back:"
show tabbylab ping --outside --expect-fail outside
show tabbylab nat on

printf '\n%s==== Done in %ds%s\n' "$bold" "$SECONDS" "$plain"

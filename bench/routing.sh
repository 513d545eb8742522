#!/usr/bin/env bash
# Benchmarks of the kernel route reconciler (issue 8 goals), as root, in network namespaces
# the benchmarks create and remove (tabby-bench*-<random>); the machine's own routes are
# never touched. Prints the figures next to their goals.
#
#   bench/routing.sh            # everything (a few minutes: 100,000 routes are installed 8 times)
#   QUICK=1 bench/routing.sh    # skip the 100,000-route cold sync
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
	echo "bench/routing.sh: needs root (network namespaces)" >&2
	exit 2
fi

GO=${GO:-go}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo

run() { # name, bench regexp, benchtime
	"$GO" test -count=1 -run '^$' -timeout 30m -bench "$2" -benchtime "$3" ./routing/ | grep '^Benchmark' | tee -a "$out"
}

echo "== cold sync: reconciler (Set → Synced) against a bare netlink RouteReplace loop, same routes, fresh namespaces, same run (goal: ratio ≤ 1.3)"
run coldsync '^BenchmarkColdSync$/^routes=10000$' 6x
if [[ -z ${QUICK:-} ]]; then
	run coldsync '^BenchmarkColdSync$/^routes=100000$' 4x
fi
echo
echo "== the reconciler's own CPU per route (a kernel that costs nothing)"
run overhead '^BenchmarkColdSyncOverhead$' 1s
echo
echo "== one node joining a cluster of 5,000 (goals: ≤ 3 netlink requests, ≤ 5 ms CPU)"
run join '^BenchmarkJoin5000$' 200x
echo
echo "== Desired() for 5,000 nodes, and a Planner's cost per node join or leave (with the syncer's change lists, and comparing maps)"
run desired '^BenchmarkDesired$' 1s
run planner '^BenchmarkPlannerJoinLeave$' 1s
echo

# A summary of the figures that have goals.
awk '
/^BenchmarkColdSync\/routes=/ {
	for (i = 1; i <= NF; i++) {
		if ($(i+1) == "ratio") r = $i
		if ($(i+1) == "raw-ms/op") raw = $i
		if ($(i+1) == "tabby-ms/op") t = $i
	}
	split($1, n, "[=-]")
	printf "cold sync %7s routes: raw %8.1f ms, tabby %8.1f ms, ratio %.2f (goal ≤ 1.3)\n", n[2], raw, t, r
}
/^BenchmarkJoin5000\// {
	for (i = 1; i <= NF; i++) {
		if ($(i+1) == "netlink-ops/join") ops = $i
		if ($(i+1) == "cpu-µs/join") cpu = $i
	}
	split($1, m, "[/-]")
	printf "join among 5,000 (%s): %s netlink requests (goal ≤ 3), %.2f ms CPU (goal ≤ 5)\n", m[2], ops, cpu / 1000
}
/^BenchmarkDesired\// {
	printf "Desired %s: %.2f ms\n", $1, $3 / 1e6
}
/^BenchmarkPlannerJoinLeave\// {
	printf "Planner per join or leave %s: %.2f ms\n", $1, $3 / 1e6
}' "$out"

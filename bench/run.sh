#!/usr/bin/env bash
# bench/run.sh — every figure of issue 8, each printed next to a reference measured in the
# same run, as root, inside network namespaces the benchmarks create and remove. `make
# bench` runs it after `make build` (the benchmarks start bin/tabbyd). About 9 minutes.
#
#   bench/run.sh                 # everything
#   BENCH='Startup|Memory' bench/run.sh   # only the benchmarks that match ("routing" for
#                                          # bench/routing.sh)
#   QUICK=1 bench/run.sh         # fewer repetitions, no 100,000-route cold sync
#
# The machine is shared: every figure carries the load average it was measured under, and
# repeated measurements are printed as median (min–max, n).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
	echo "bench/run.sh: needs root (network namespaces)" >&2
	exit 2
fi

GO=${GO:-go}
work=$(mktemp -d /tmp/tabby-bench.XXXXXX)
# Namespaces this run may leave behind if a benchmark process is killed: theirs start with
# tabby-bench-<8 hex>- and did not exist before the run.
before=$(ls /run/netns 2>/dev/null | sort || true)

cleanup() {
	local ns pid
	for ns in $(comm -13 <(echo "$before") <(ls /run/netns 2>/dev/null | sort) | grep -E '^tabby-bench-[0-9a-f]{8}-' || true); do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -9 "$pid" 2>/dev/null || true
		done
		ip netns del "$ns" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
echo "machine: $(nproc) cores ($cpu), $(uname -sr), $("$GO" version | cut -d' ' -f3), $(free -m | awk '/^Mem:/{print $2}') MB RAM"
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# 1 and 4: the kernel reconciler alone (the routing package's benchmarks).
touch "$work/routing.txt"
if [[ -z ${BENCH:-} || routing =~ $BENCH ]]; then
	echo "== routing: cold sync against a bare RouteReplace loop, one join among 5,000, Desired"
	if [[ -n ${QUICK:-} ]]; then
		QUICK=1 GO="$GO" bench/routing.sh | tee "$work/routing.txt"
	else
		GO="$GO" bench/routing.sh | tee "$work/routing.txt"
	fi
	echo
fi

# 2, 3, 4 (whole daemon), 5, 6, 7, 8: real tabbyd processes.
"$GO" test -c -o "$work/bench.test" ./bench/
export TABBY_BENCH_BIN=$PWD/bin
reps() { # normal quick
	if [[ -n ${QUICK:-} ]]; then echo "$2"; else echo "$1"; fi
}
bench() { # name benchtime
	if [[ -n ${BENCH:-} && ! $1 =~ $BENCH ]]; then
		return
	fi
	echo "== $1"
	# Figures and results; a failure with every line of its message (the last lines of a
	# daemon's log come on lines of their own).
	(cd bench && "$work/bench.test" -test.run '^$' -test.bench "^Benchmark$1\$" -test.benchtime "$2" -test.timeout 20m) |
		awk '/^--- FAIL/ { failing = 1 }
			failing || /^(FIGURE|Benchmark|--- SKIP|FAIL|panic)|_test\.go:/ { print; fflush() }
			/^(FAIL|PASS|ok)/ { failing = 0 }' | tee -a "$work/bench.txt" || true
	echo
}
bench FirstSnapshot5000 "$(reps 8x 3x)"
bench Startup5000 "$(reps 5x 2x)"
bench Propagation1000 "$(reps 3x 1x)"
bench JoinLeave5000 "$(reps 20x 5x)"
bench Memory5000 "$(reps 3x 1x)"
bench Mesh50 "$(reps 3x 1x)"
bench Datapath "$(reps 3x 1x)"
bench DatapathJumbo "$(reps 3x 1x)"
bench DatapathHostCPU "$(reps 3x 1x)"
bench Restart "$(reps 3x 1x)"

echo "== summary (load at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
grep -hE '^(cold sync|join among|Desired)' "$work/routing.txt" || true
grep -h '^FIGURE' "$work/bench.txt" | sed 's/^FIGURE //' || true
if grep -qE '^(--- FAIL|FAIL|panic)' "$work/bench.txt"; then
	echo "some benchmarks failed (see above)" >&2
	exit 1
fi

#!/usr/bin/env bash
# bench/profile.sh — pprof profiles of a whole tabbyd at the scale of issue 8: the start-up
# of a host joining a cluster of 5,000 nodes (CPU of its first 3 s, heap once every route
# is in and 4 s later), the paced block writes of BenchmarkPropagation1000 (CPU) and 100
# nodes joining and leaving one at a time (CPU, and what they allocated). The daemon is
# daemon.Run inside the bench test binary, which adds the profiling; everything runs in
# throwaway network namespaces. Prints the top entries; the profiles stay in DIR.
#
#   bench/profile.sh [DIR]       # default: a new directory under /tmp
#   TABBY_BENCH_PER_BLOCK=10 bench/profile.sh   # ten addresses per block
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
	echo "bench/profile.sh: needs root (network namespaces)" >&2
	exit 2
fi
GO=${GO:-go}
dir=${1:-$(mktemp -d /tmp/tabby-profile.XXXXXX)}
mkdir -p "$dir"
"$GO" build -o bin/ ./cmd/tabbyd
"$GO" test -c -o "$dir/bench.test" ./bench/
(cd bench && TABBY_BENCH_BIN=$PWD/../bin TABBY_BENCH_PROFILE_DIR=$dir "$dir/bench.test" \
	-test.run '^$' -test.bench '^BenchmarkProfile(Startup|Writes|JoinLeave)5000$' -test.benchtime 1x) | grep -E '^(FIGURE|--- FAIL|FAIL|panic)' || true

top() { # title profile [options]
	echo "== $1"
	"$GO" tool pprof -top -nodecount 25 "${@:3}" "$dir/bench.test" "$dir/$2" 2>/dev/null | sed -n '/flat%/,$p'
	echo
}
top "start-up CPU, cumulative" cpu.pprof -cum
top "heap in use 4 s after start-up" heap-2.pprof -sample_index=inuse_space
top "heap allocated during start-up" heap-1.pprof -sample_index=alloc_space
top "CPU during 1,000 paced block writes, cumulative" cpu-1.pprof -cum
top "CPU during 100 node joins and 100 leaves, cumulative" joinleave/cpu-1.pprof -cum
top "allocated during 100 node joins and 100 leaves" joinleave/heap-2.pprof -sample_index=alloc_space -base "$dir/joinleave/heap-1.pprof"
echo "profiles: $dir (go tool pprof -http=: $dir/bench.test $dir/cpu.pprof)"

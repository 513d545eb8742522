// Package bench holds tabby's whole-system benchmarks (issue 8): real tabbyd processes
// inside network namespaces that the benchmarks create and remove, against a real etcd
// that runs in one of them, and every figure printed next to a reference measured in the
// same run: the kernel's own cost (ip -batch, a bare netlink loop), etcd's own latency
// (a plain watcher), an idle daemon's memory, an unmeasured baseline.
//
// The package has no code outside its tests: `go test ./...` compiles it and runs nothing
// (there are only benchmarks). bench/run.sh runs them, as root, for `make bench`.
// Everything they start lives in namespaces named tabby-bench-<random>-*; the root
// namespace's routes, addresses, links and firewall are never touched.
package bench

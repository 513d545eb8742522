// Package lab is tabby's one end-to-end harness. It builds networks out of namespaces on
// one machine and runs tabby in them as in production, for cmd/tabbylab, the end-to-end
// tests (lab's own suite and daemon/e2e) and the whole-system benchmarks (bench).
//
// What it offers:
//   - Topology: hosts in subnets (Segments) joined by a router namespace that forwards only
//     what it has routes for (as a cloud VPC router does), and an optional outside host
//     behind the router that knows only the hosts' network. Articles is the topology of
//     the articles in ../shared/articles.
//   - Cluster: a Topology with its state directory. StartEtcd runs etcd in the router's
//     namespace and Datastore connects to it; StartTabbyd is the one way to configure and
//     start a tabbyd (TabbydOptions say what differs: log level, key root, autodetection,
//     labels, BGP timers, environment, a systemd notify socket), WaitReady waits for
//     /readiness, StopTabbyd and the returned process stop it; AddWorkload is the one way
//     to plug a workload in with tabby-cni; Up does all of it for the articles' lab, and
//     Down removes everything, also after a crash.
//   - lab/labtest ties a Cluster to a test: unique names, removal at cleanup, failure when
//     something is left behind.
//
// Every namespace, link and rule the lab makes lives in namespaces whose names start with
// the topology's prefix, so Destroy can remove everything. Processes are started through
// internal/namedns, stopped by PID, and found again by namespace, never by name. New kinds
// of hosts, addresses or datastores belong in Topology, TabbydOptions and the Cluster's
// start methods, not in another harness.
package lab

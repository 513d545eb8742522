package lab

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/internal/namedns"
)

// Datastore connects this process to the lab's etcd. The root namespace has no route to
// the lab (and must not get one), so every connection is a socket made on a thread inside
// the router's namespace, where etcd listens; once connected it works from any thread.
// The caller closes the client.
func (c *Cluster) Datastore() (*datastore.Client, error) {
	ns := c.Topo.RouterNS()
	endpoints := c.etcdURLs(c.Topo.Segments[0].Router.Addr())
	var cred EtcdCredentials
	if c.Secure != nil {
		cred = c.EtcdCredentials(c.Secure.ctlUser())
	}
	tlsConf, err := c.clientTLS()
	if err != nil {
		return nil, fmt.Errorf("etcd client for the lab: %w", err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsConf,
		Username:    cred.Username,
		Password:    cred.Password,
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return namedns.Dial(ctx, ns, "tcp", addr)
		})},
		// The client's own retries would otherwise log to stderr through zap.
		Logger: zap.NewNop(),
		// The benchmarks load tens of thousands of keys in one transaction and read them
		// back in one range.
		MaxCallSendMsgSize: 64 << 20,
		MaxCallRecvMsgSize: 256 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for the lab (%s in %s): %w", strings.Join(endpoints, ","), ns, err)
	}
	return datastore.NewFromEtcd(cli, ""), nil
}

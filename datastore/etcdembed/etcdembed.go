// Package etcdembed runs a real etcd server inside the process: one member alone, or one
// member of a cluster, over plain HTTP or TLS with client-certificate authentication.
// tabbylab and the tests use it so that tabby always talks to a real etcd, never to a fake.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Options configure the server.
type Options struct {
	// Dir holds the member's data. Required.
	Dir string
	// Host is the address to listen on, 127.0.0.1 when empty.
	Host string
	// AdvertiseHost is the address clients are told to use, Host when empty. It must be
	// set when Host is a wildcard (0.0.0.0).
	AdvertiseHost string
	// ClientPort and PeerPort: 0 picks a free port.
	ClientPort, PeerPort int
	// Fast shortens the raft tick and election timeout so the server starts in tens of
	// milliseconds (tests and the lab: one member, nothing to elect against).
	Fast bool
	// LogLevel of etcd's own logger; "error" when empty.
	LogLevel string
	// Name is the member's name, "tabby" when empty.
	Name string
	// InitialCluster lists every member of a new cluster as name=peerURL,... (the format
	// of etcd's --initial-cluster, see PeerURL); empty means this member alone. Members
	// of a cluster need fixed ports: their peers know them in advance.
	InitialCluster string
	// ClusterToken tells this cluster's members from another's on the same network;
	// "tabby" when empty.
	ClusterToken string
	// TLS, when set, serves clients and peers over TLS; nil serves plain HTTP.
	TLS *TLS
}

// TLS is the certificate material of a member. The certificate serves clients and
// peers and is the member's client certificate towards its peers, so it needs both
// the serverAuth and clientAuth key usages (configs/etcd/make-certs.sh member does so).
type TLS struct {
	// CAFile verifies clients and peers.
	CAFile string
	// CertFile and KeyFile are the member's certificate and key.
	CertFile, KeyFile string
	// ClientCertAuth requires every client to present a certificate signed by CAFile
	// (etcd's --client-cert-auth); its common name is the etcd user when the client
	// gives no username. Peers always need one.
	ClientCertAuth bool
}

// scheme is the URL scheme of a member's client and peer URLs.
func (o Options) scheme() string {
	if o.TLS != nil {
		return "https"
	}
	return "http"
}

// PeerURL is the peer URL of a member at host:port, with or without TLS, the form an
// InitialCluster entry takes.
func PeerURL(host string, port int, withTLS bool) string {
	scheme := "http"
	if withTLS {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port))
}

// Server is a running embedded etcd.
type Server struct {
	etcd *embed.Etcd
	opts Options
	// Endpoint is the client URL, e.g. http://127.0.0.1:23791.
	Endpoint string
}

// Start starts etcd and waits until it serves clients or ctx ends.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("etcdembed: Dir is required")
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.InitialCluster != "" && (opts.ClientPort == 0 || opts.PeerPort == 0) {
		return nil, errors.New("etcdembed: a member of a cluster needs its ClientPort and PeerPort set")
	}
	if t := opts.TLS; t != nil && (t.CAFile == "" || t.CertFile == "" || t.KeyFile == "") {
		return nil, errors.New("etcdembed: TLS needs CAFile, CertFile and KeyFile")
	}
	var lastErr error
	// A port picked free can be taken by someone else before etcd binds it: try again.
	for attempt := 0; attempt < 5; attempt++ {
		o := opts
		var err error
		if o.ClientPort == 0 {
			if o.ClientPort, err = freePort(o.Host); err != nil {
				return nil, err
			}
		}
		if o.PeerPort == 0 {
			if o.PeerPort, err = freePort(o.Host); err != nil {
				return nil, err
			}
		}
		s, err := start(ctx, o)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if ctx.Err() != nil || (opts.ClientPort != 0 && opts.PeerPort != 0) {
			break
		}
	}
	return nil, lastErr
}

func start(ctx context.Context, o Options) (*Server, error) {
	cfg := embed.NewConfig()
	cfg.Name = o.Name
	if cfg.Name == "" {
		cfg.Name = "tabby"
	}
	cfg.Dir = o.Dir
	cfg.LogLevel = o.LogLevel
	if cfg.LogLevel == "" {
		cfg.LogLevel = "error"
	}
	adv := o.AdvertiseHost
	if adv == "" {
		adv = o.Host
	}
	scheme := o.scheme()
	listenClient := url.URL{Scheme: scheme, Host: net.JoinHostPort(o.Host, strconv.Itoa(o.ClientPort))}
	client := url.URL{Scheme: scheme, Host: net.JoinHostPort(adv, strconv.Itoa(o.ClientPort))}
	listenPeer := url.URL{Scheme: scheme, Host: net.JoinHostPort(o.Host, strconv.Itoa(o.PeerPort))}
	peer := url.URL{Scheme: scheme, Host: net.JoinHostPort(adv, strconv.Itoa(o.PeerPort))}
	cfg.ListenClientUrls = []url.URL{listenClient}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{listenPeer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.InitialClusterToken = o.ClusterToken
	if cfg.InitialClusterToken == "" {
		cfg.InitialClusterToken = "tabby"
	}
	members := 1
	if o.InitialCluster != "" {
		cfg.InitialCluster = o.InitialCluster
		members = len(strings.Split(o.InitialCluster, ","))
	}
	if t := o.TLS; t != nil {
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: t.CertFile, KeyFile: t.KeyFile, TrustedCAFile: t.CAFile, ClientCertAuth: t.ClientCertAuth}
		cfg.PeerTLSInfo = transport.TLSInfo{CertFile: t.CertFile, KeyFile: t.KeyFile, TrustedCAFile: t.CAFile, ClientCertAuth: true}
	}
	switch {
	case o.Fast && members == 1:
		cfg.TickMs = 10
		cfg.ElectionMs = 100
	case o.Fast:
		// Members elect against each other: an election timeout of ten ticks on a busy
		// machine would have them depose a healthy leader now and then.
		cfg.TickMs = 50
		cfg.ElectionMs = 1000
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd on %s: %w", client.Host, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd on %s: %w", client.Host, err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("etcd on %s not ready: %w", client.Host, ctx.Err())
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd on %s not ready after 60s", client.Host)
	}
	return &Server{etcd: e, opts: o, Endpoint: client.String()}, nil
}

// Close stops the server. Its data stays in Dir, so Restart can bring it back.
func (s *Server) Close() {
	s.etcd.Close()
}

// Restart starts the server again on the same ports and data (after Close).
func (s *Server) Restart(ctx context.Context) error {
	n, err := start(ctx, s.opts)
	if err != nil {
		return err
	}
	*s = *n
	return nil
}

// Etcd returns the embedded server, for tests that need to reach into it (compaction).
func (s *Server) Etcd() *embed.Etcd { return s.etcd }

// Name is the member's name.
func (s *Server) Name() string { return s.etcd.Config().Name }

// IsLeader reports whether this member leads its cluster now.
func (s *Server) IsLeader() bool {
	return s.etcd.Server.Leader() == s.etcd.Server.MemberID()
}

// PeerURL is the URL the member's peers reach it at.
func (s *Server) PeerURL() string {
	adv := s.opts.AdvertiseHost
	if adv == "" {
		adv = s.opts.Host
	}
	return PeerURL(adv, s.opts.PeerPort, s.opts.TLS != nil)
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

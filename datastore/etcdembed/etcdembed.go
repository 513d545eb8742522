// Package etcdembed runs a real single-member etcd server inside the process. tabbylab and
// the tests use it so that tabby always talks to a real etcd, never to a fake.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

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
	cfg.Name = "tabby"
	cfg.Dir = o.Dir
	cfg.LogLevel = o.LogLevel
	if cfg.LogLevel == "" {
		cfg.LogLevel = "error"
	}
	adv := o.AdvertiseHost
	if adv == "" {
		adv = o.Host
	}
	listenClient := url.URL{Scheme: "http", Host: net.JoinHostPort(o.Host, strconv.Itoa(o.ClientPort))}
	client := url.URL{Scheme: "http", Host: net.JoinHostPort(adv, strconv.Itoa(o.ClientPort))}
	listenPeer := url.URL{Scheme: "http", Host: net.JoinHostPort(o.Host, strconv.Itoa(o.PeerPort))}
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort(adv, strconv.Itoa(o.PeerPort))}
	cfg.ListenClientUrls = []url.URL{listenClient}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{listenPeer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if o.Fast {
		cfg.TickMs = 10
		cfg.ElectionMs = 100
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

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

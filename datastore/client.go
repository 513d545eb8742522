package datastore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Sentinel errors of compare-and-swap writes. Errors returned by Client wrap one of these
// together with the key, so callers test them with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a create found the key already present.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict: an update or delete found a different revision than the one it read;
	// someone else wrote in between. Re-read and retry.
	ErrConflict = errors.New("update conflict")
)

// KeyError is the typed error of a failed compare-and-swap or a refused request: the key
// and why.
type KeyError struct {
	Key string
	Err error // ErrNotFound, ErrAlreadyExists, ErrConflict or ErrPermissionDenied
}

func (e *KeyError) Error() string { return fmt.Sprintf("%s: %v", e.Key, e.Err) }
func (e *KeyError) Unwrap() error { return e.Err }

// Client is an etcd v3 client that reads and writes Calico's layout with compare-and-swap.
type Client struct {
	etcd *clientv3.Client
	Keys Keys
}

// New connects to etcd. It does not block until a connection is up: the first request does.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("etcd configuration: %w", err)
	}
	dial := cfg.DialTimeout
	if dial == 0 {
		dial = 5 * time.Second
	}
	var tlsConf *tls.Config
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		info := transport.TLSInfo{TrustedCAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile}
		var err error
		if tlsConf, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcd TLS configuration: %w", err)
		}
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          dial,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  tlsConf,
		Username:             cfg.Username,
		Password:             cfg.Password,
		// Without this the client logs through its own zap logger to stderr.
		Logger: quietZap(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", cfg.Endpoints, err)
	}
	return &Client{etcd: c, Keys: NewKeys(cfg.Prefix)}, nil
}

// NewFromEtcd wraps an existing etcd client (tests, embedded servers).
func NewFromEtcd(c *clientv3.Client, prefix string) *Client {
	return &Client{etcd: c, Keys: NewKeys(prefix)}
}

// Etcd returns the underlying etcd client.
func (c *Client) Etcd() *clientv3.Client { return c.etcd }

// Close closes the connection.
func (c *Client) Close() error { return c.etcd.Close() }

// KV is one stored value and the revision it was last written at.
type KV struct {
	Key         string
	Value       []byte
	ModRevision int64
}

// Get reads one key. A missing key is ErrNotFound.
func (c *Client) Get(ctx context.Context, key string) (KV, error) {
	resp, err := c.etcd.Get(ctx, key)
	if err != nil {
		return KV{}, opError("get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return KV{}, &KeyError{Key: key, Err: ErrNotFound}
	}
	kv := resp.Kvs[0]
	return KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision}, nil
}

// List reads every key under prefix at one revision, which it returns too.
func (c *Client) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	resp, err := c.etcd.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, opError("list", prefix, err)
	}
	out := make([]KV, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision})
	}
	return out, resp.Header.Revision, nil
}

// Create writes key only if it does not exist and returns the new revision.
// An existing key is ErrAlreadyExists.
func (c *Client) Create(ctx context.Context, key string, value []byte) (int64, error) {
	resp, err := c.etcd.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value))).
		Commit()
	if err != nil {
		return 0, opError("create", key, err)
	}
	if !resp.Succeeded {
		return 0, &KeyError{Key: key, Err: ErrAlreadyExists}
	}
	return resp.Header.Revision, nil
}

// Update writes key only if it is still at revision rev and returns the new revision.
// A different revision is ErrConflict; a missing key is ErrNotFound.
func (c *Client) Update(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	resp, err := c.etcd.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, string(value))).
		Else(clientv3.OpGet(key, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return 0, opError("update", key, err)
	}
	if !resp.Succeeded {
		return 0, &KeyError{Key: key, Err: casFailure(resp)}
	}
	return resp.Header.Revision, nil
}

// Delete removes key only if it is still at revision rev.
// A different revision is ErrConflict; a missing key is ErrNotFound.
func (c *Client) Delete(ctx context.Context, key string, rev int64) error {
	resp, err := c.etcd.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpDelete(key)).
		Else(clientv3.OpGet(key, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return opError("delete", key, err)
	}
	if !resp.Succeeded {
		return &KeyError{Key: key, Err: casFailure(resp)}
	}
	return nil
}

// casFailure tells a missing key from a changed one, from the Else branch's count.
func casFailure(resp *clientv3.TxnResponse) error {
	if len(resp.Responses) == 1 {
		if r := resp.Responses[0].GetResponseRange(); r != nil && r.Count == 0 {
			return ErrNotFound
		}
	}
	return ErrConflict
}

package datastore

import (
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// ErrPermissionDenied: etcd's RBAC does not let this client's etcd user read or write
// the key (its roles lack the permission). It is not retried: the answer will not change
// until an operator grants the role.
var ErrPermissionDenied = errors.New("permission denied by etcd RBAC (the etcd user's roles do not cover this key)")

// Denied returns err as a KeyError naming keys when etcd refused the request for lack of
// permission, and err unchanged otherwise. A transaction touching several keys names them
// all: etcd does not say which one its roles lack.
func Denied(err error, keys ...string) error {
	if err == nil || !errors.Is(err, rpctypes.ErrPermissionDenied) {
		return err
	}
	return &KeyError{Key: strings.Join(keys, ", "), Err: ErrPermissionDenied}
}

// opError wraps the error of a request op (get, list, create, update, delete) on key:
// "create /calico/...: <err>", or for a refused one "create: /calico/...: permission
// denied ..." with a KeyError inside, so that the key is named once either way.
func opError(op, key string, err error) error {
	if d := Denied(err, key); d != err {
		return fmt.Errorf("%s: %w", op, d)
	}
	return fmt.Errorf("%s %s: %w", op, key, err)
}

package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabby-net/tabby/internal/backoff"
)

// The one read-modify-write of a stored document (SPEC §2 and §2a). Every write that
// starts from what is stored goes through Modify (one key; ModifyJSON for a typed
// document), or, when one transaction writes several keys (IPAM's block and handles),
// encodes each with Overlay on what it read and conditions it on KV.Condition, inside a
// Retry: fields the writer does not model survive, and the write is a compare-and-swap on
// the revision that was read.

// ErrTooManyConflicts: a compare-and-swap loop ran out of attempts because other writers
// kept changing what it read. The error also wraps the last refusal (ErrConflict, …).
var ErrTooManyConflicts = errors.New("too many conflicting writes")

// Retry bounds a compare-and-swap loop: how many attempts, the pause between them, and
// which errors mean "read again and retry".
type Retry struct {
	// Attempts is the number of tries, at least 1.
	Attempts int
	// Backoff, when its Min is set, paces the attempts after a refusal (each Do starts
	// from a fresh copy). Zero: retry at once.
	Backoff backoff.Backoff
	// Refused reports whether an attempt's error is a refused compare-and-swap. Nil means
	// errors.Is(err, ErrConflict). An inner loop that gave up (ErrTooManyConflicts) is
	// never retried by an outer one.
	Refused func(error) bool
}

// DefaultRetry is the policy of tabbyctl's and tabbyd's resource writes: ten immediate
// retries. Past them something keeps writing the same key and the caller should hear
// about it rather than spin.
var DefaultRetry = Retry{Attempts: 10}

// Do calls attempt until it returns nil or an error that is not a refused compare-and-swap,
// at most r.Attempts times. When every attempt was refused, the error says what was being
// done and wraps ErrTooManyConflicts and the last refusal.
func (r Retry) Do(ctx context.Context, what string, attempt func(ctx context.Context) error) error {
	refused := r.Refused
	if refused == nil {
		refused = func(err error) bool { return errors.Is(err, ErrConflict) }
	}
	n := max(r.Attempts, 1)
	var last error
	for i := range n {
		if i > 0 && r.Backoff.Min > 0 {
			t := time.NewTimer(r.Backoff.Next())
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("%s: %w", what, context.Cause(ctx))
			case <-t.C:
			}
		}
		last = attempt(ctx)
		if last == nil || errors.Is(last, ErrTooManyConflicts) || !refused(last) {
			return last
		}
	}
	return fmt.Errorf("%s: gave up after %d attempts: %w: %w", what, n, ErrTooManyConflicts, last)
}

// Edit is what one attempt of Modify decided to do with the document it read.
type Edit struct {
	// Value is the new document. Nil (and Delete false) writes nothing.
	Value []byte
	// Delete removes the key instead.
	Delete bool
	// Guard lists further conditions the write depends on (for instance that no pool
	// changed since the new one was checked against them). When one fails, Modify reads
	// again and retries like on any conflict.
	Guard []clientv3.Cmp
}

// Modify is the read-modify-write of one key: it reads the stored document (cur.ModRevision
// is 0 when the key does not exist), lets edit decide, and writes the result with
// compare-and-swap: a create on Version(key)==0, an update or delete on
// ModRevision(key)==cur.ModRevision, plus edit's guards. When the write is refused, it reads
// again and calls edit again, as r allows. An error from edit ends the loop and nothing is
// written. It returns the key as it stands afterwards (ModRevision 0 after a delete; cur
// when nothing was written).
//
// edit should build Value with Overlay(cur.Value, …) (or use ModifyJSON) so that fields it
// does not own survive.
func (c *Client) Modify(ctx context.Context, key string, r Retry, edit func(cur KV) (Edit, error)) (KV, error) {
	var out KV
	err := r.Do(ctx, "write "+key, func(ctx context.Context) error {
		cur, err := c.Get(ctx, key)
		if errors.Is(err, ErrNotFound) {
			cur, err = KV{Key: key}, nil
		}
		if err != nil {
			return err
		}
		e, err := edit(cur)
		if err != nil {
			return err
		}
		if e.Value == nil && !e.Delete {
			out = cur
			return nil
		}
		if e.Delete && cur.ModRevision == 0 {
			out = KV{Key: key}
			return nil
		}
		op := clientv3.OpPut(key, string(e.Value))
		if e.Delete {
			op = clientv3.OpDelete(key)
		}
		cond := cur.Condition()
		resp, err := c.etcd.Txn(ctx).If(append([]clientv3.Cmp{cond}, e.Guard...)...).Then(op).Commit()
		if err != nil {
			return opError("write", key, err)
		}
		if !resp.Succeeded {
			return &KeyError{Key: key, Err: ErrConflict}
		}
		out = KV{Key: key, Value: e.Value, ModRevision: resp.Header.Revision}
		if e.Delete {
			out = KV{Key: key}
		}
		return nil
	})
	return out, err
}

// Condition is the compare-and-swap condition of writing over kv: the key is still absent
// when kv.ModRevision is 0 (kv was not found), else still at kv.ModRevision.
func (kv KV) Condition() clientv3.Cmp {
	if kv.ModRevision == 0 {
		return clientv3.Compare(clientv3.Version(kv.Key), "=", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(kv.Key), "=", kv.ModRevision)
}

// ModifyJSON is Modify for a document that the caller handles as a T: the stored document
// is decoded into a T (the zero T when the key does not exist; exists tells), change
// edits it, and the result is Overlay'd on the stored JSON, so only the fields T models
// are the caller's to change. Nothing is written when that leaves the document as it is.
// A stored document that does not decode into T is an error naming the key; nothing is
// written. It returns the value as stored afterwards and its key.
func ModifyJSON[T any](ctx context.Context, c *Client, key string, r Retry, change func(v *T, exists bool) error) (T, KV, error) {
	var v T
	kv, err := c.Modify(ctx, key, r, func(cur KV) (Edit, error) {
		var next T
		exists := cur.ModRevision != 0
		if exists && len(cur.Value) > 0 {
			if err := json.Unmarshal(cur.Value, &next); err != nil {
				return Edit{}, fmt.Errorf("%s: stored document is not valid: %w", key, err)
			}
		}
		if err := change(&next, exists); err != nil {
			return Edit{}, err
		}
		b, err := Overlay(cur.Value, &next)
		if err != nil {
			return Edit{}, fmt.Errorf("encode %s: %w", key, err)
		}
		v = next
		if exists && string(b) == string(cur.Value) {
			return Edit{}, nil
		}
		return Edit{Value: b}, nil
	})
	if err != nil {
		var zero T
		return zero, KV{}, err
	}
	return v, kv, nil
}

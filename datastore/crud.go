package datastore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ResourceList is the result of listing one kind.
type ResourceList struct {
	// Items are the decodable resources, sorted by name, with their defaults applied.
	Items []Resource
	// Revision is the etcd revision the list was read at.
	Revision int64
	// Problems are the stored documents that could not be decoded.
	Problems []Problem
}

func (c *Client) resourceKey(kind, name string) (string, error) {
	if !knownKind(kind) {
		return "", unknownKindError(kind)
	}
	switch {
	case name == "":
		return "", &FieldError{Kind: kind, Field: "metadata.name", Problem: "required"}
	case strings.Contains(name, "/"):
		return "", &FieldError{Kind: kind, Name: name, Field: "metadata.name", Problem: fmt.Sprintf("%q contains '/'", name)}
	}
	return c.Keys.Resource(kind, name), nil
}

// notFound wraps a missing-key error with the resource it is about.
func notFound(kind, name string, err error) error {
	return fmt.Errorf("%s %q does not exist: %w", kind, name, err)
}

// GetResource reads one resource, with its defaults applied and resourceVersion set.
// A missing resource is an error wrapping ErrNotFound.
func (c *Client) GetResource(ctx context.Context, kind, name string) (Resource, error) {
	if kind == KindIPAMConfiguration {
		return c.getIPAMConfigurationNamed(ctx, name)
	}
	key, err := c.resourceKey(kind, name)
	if err != nil {
		return nil, err
	}
	kv, err := c.Get(ctx, key)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, notFound(kind, name, err)
		}
		return nil, err
	}
	return DecodeStored(kind, name, kv.Value, kv.ModRevision)
}

// ListResources reads every resource of one kind at one revision.
func (c *Client) ListResources(ctx context.Context, kind string) (ResourceList, error) {
	if kind == KindIPAMConfiguration {
		return c.listIPAMConfigurations(ctx)
	}
	if !knownKind(kind) {
		return ResourceList{}, unknownKindError(kind)
	}
	kvs, rev, err := c.List(ctx, c.Keys.ResourcePrefix(kind))
	if err != nil {
		return ResourceList{}, err
	}
	out := ResourceList{Revision: rev}
	for _, kv := range kvs {
		name := strings.TrimPrefix(kv.Key, c.Keys.ResourcePrefix(kind))
		if name == "" || strings.Contains(name, "/") {
			continue
		}
		r, err := DecodeStored(kind, name, kv.Value, kv.ModRevision)
		if err != nil {
			out.Problems = append(out.Problems, Problem{Key: kv.Key, ModRevision: kv.ModRevision, Err: err.Error()})
			continue
		}
		out.Items = append(out.Items, r)
	}
	return out, nil
}

// CreateResource stores a new resource, as Calico does: the rules of SPEC §3 are checked
// (for a pool, against every other pool too), a new uid and creationTimestamp are set,
// resourceVersion is not stored, and a pool gets its blockSize and nodeSelector defaults
// written. An existing resource is an error wrapping ErrAlreadyExists. The result is the
// resource as stored, read back with its defaults and resourceVersion.
func (c *Client) CreateResource(ctx context.Context, r Resource) (Resource, error) {
	if ic, ok := r.(*IPAMConfiguration); ok {
		return c.putIPAMConfiguration(ctx, ic, true)
	}
	in := cloneResource(r)
	kind, name := in.ResourceKind(), in.Meta().Name
	key, err := c.resourceKey(kind, name)
	if err != nil {
		return nil, err
	}
	if err := Validate(in); err != nil {
		return nil, err
	}
	return c.storeResource(ctx, in, func(cur KV) (Resource, []byte, error) {
		if cur.ModRevision != 0 {
			return nil, nil, fmt.Errorf("%s %q: %w", kind, name, &KeyError{Key: key, Err: ErrAlreadyExists})
		}
		return cloneResource(in), nil, nil
	})
}

// UpdateResource writes r over a stored resource. When r carries a resourceVersion it is
// the compare-and-swap condition: a resource changed since is an error wrapping ErrConflict
// (nothing is written). Without one, r is written over whatever is stored (as calicoctl
// replace does), retrying if the resource changes while it is written. The fields tabby
// models are r's; every field of the stored document that tabby does not model is kept
// (SPEC §2a). The stored uid and creationTimestamp are kept; the rules of SPEC §3 are
// checked, including a pool's immutable cidr and blockSize and its overlap with other
// pools.
func (c *Client) UpdateResource(ctx context.Context, r Resource) (Resource, error) {
	if ic, ok := r.(*IPAMConfiguration); ok {
		return c.putIPAMConfiguration(ctx, ic, false)
	}
	in := cloneResource(r)
	kind, name := in.ResourceKind(), in.Meta().Name
	key, err := c.resourceKey(kind, name)
	if err != nil {
		return nil, err
	}
	if err := Validate(in); err != nil {
		return nil, err
	}
	wantRV := in.Meta().ResourceVersion
	if err := checkRV(kind, name, wantRV); err != nil {
		return nil, err
	}
	return c.storeResource(ctx, in, func(cur KV) (Resource, []byte, error) {
		if cur.ModRevision == 0 {
			return nil, nil, notFound(kind, name, &KeyError{Key: key, Err: ErrNotFound})
		}
		if wantRV != "" && wantRV != strconv.FormatInt(cur.ModRevision, 10) {
			return nil, nil, staleError(kind, name, key, wantRV, cur.ModRevision)
		}
		return cloneResource(in), cur.Value, nil
	})
}

func checkRV(kind, name, rv string) error {
	if rv == "" {
		return nil
	}
	if _, err := strconv.ParseInt(rv, 10, 64); err != nil {
		return &FieldError{Kind: kind, Name: name, Field: "metadata.resourceVersion", Problem: fmt.Sprintf("%q is not a revision number", rv)}
	}
	return nil
}

// storeResource is the one read-modify-write behind every resource write (create, update,
// apply, patch, ModifyNode), on Modify. build sees the stored document (cur.ModRevision 0
// when there is none) and returns the resource to store and the JSON document to overlay
// it on (nil: none), or a nil resource to write nothing. storeResource then keeps the
// stored uid and creationTimestamp (or makes new ones), checks the resource and what the
// change may change, writes the store defaults, and writes it, conditional on the revision
// read and, for a pool, on no pool changing since the overlap check. like is the resource
// the caller asked about (for its kind and name).
func (c *Client) storeResource(ctx context.Context, like Resource, build func(cur KV) (Resource, []byte, error)) (Resource, error) {
	kind, name := like.ResourceKind(), like.Meta().Name
	key, err := c.resourceKey(kind, name)
	if err != nil {
		return nil, err
	}
	kv, err := c.Modify(ctx, key, DefaultRetry, func(cur KV) (Edit, error) {
		next, base, err := build(cur)
		if err != nil || next == nil {
			return Edit{}, err
		}
		if next.ResourceKind() != kind || next.Meta().Name != name {
			return Edit{}, fmt.Errorf("a change cannot turn %s %q into %s %q", kind, name, next.ResourceKind(), next.Meta().Name)
		}
		nm := next.Meta()
		nm.ResourceVersion = ""
		nm.UID, nm.CreationTimestamp = "", ""
		// A stored document that does not decode (written by hand) is written over.
		if cur.ModRevision != 0 {
			if stored, err := DecodeStored(kind, name, cur.Value, cur.ModRevision); err == nil {
				nm.UID, nm.CreationTimestamp = stored.Meta().UID, stored.Meta().CreationTimestamp
				if err := checkChange(stored, next); err != nil {
					return Edit{}, err
				}
			}
		}
		if nm.UID == "" {
			nm.UID = uuid.NewString()
		}
		if nm.CreationTimestamp == "" {
			nm.CreationTimestamp = time.Now().UTC().Format(time.RFC3339)
		}
		if err := Validate(next); err != nil {
			return Edit{}, err
		}
		setStoreDefaults(next)
		value, err := encodeStoredOver(base, next)
		if err != nil {
			return Edit{}, err
		}
		guard, err := c.writeGuard(ctx, next)
		if err != nil {
			return Edit{}, err
		}
		return Edit{Value: value, Guard: guard}, nil
	})
	if err != nil {
		if errors.Is(err, ErrTooManyConflicts) {
			return nil, fmt.Errorf("write %s %q: other writers kept changing it (or the pools); try again: %w", kind, name, err)
		}
		return nil, err
	}
	return DecodeStored(kind, name, kv.Value, kv.ModRevision)
}

func staleError(kind, name, key, wantRV string, stored int64) error {
	return fmt.Errorf("%s %q: resourceVersion %s is out of date (stored: %d): read it again and reapply the change: %w",
		kind, name, wantRV, stored, &KeyError{Key: key, Err: ErrConflict})
}

// checkChange applies the rules about what an update may change.
func checkChange(cur, next Resource) error {
	oldPool, ok1 := cur.(*IPPool)
	newPool, ok2 := next.(*IPPool)
	if !ok1 || !ok2 {
		return nil
	}
	n := Clone(newPool)
	SetDefaults(n)
	return validatePoolChange(oldPool, n)
}

// ApplyResource creates r, or updates it when it exists (with r's resourceVersion, if any,
// as the CAS condition), as calicoctl apply does.
func (c *Client) ApplyResource(ctx context.Context, r Resource) (Resource, error) {
	created, err := c.CreateResource(ctx, r)
	if err == nil || !errors.Is(err, ErrAlreadyExists) {
		return created, err
	}
	return c.UpdateResource(ctx, r)
}

// DeleteResource deletes one resource and returns it as it was. With a resourceVersion the
// delete is conditional on it (ErrConflict when the resource changed); without one it
// deletes whatever is stored. A missing resource wraps ErrNotFound.
//
// Deleting a pool does not release its IPAM blocks: that is IPAM's job.
func (c *Client) DeleteResource(ctx context.Context, kind, name, resourceVersion string) (Resource, error) {
	if kind == KindIPAMConfiguration {
		return c.deleteIPAMConfiguration(ctx, name, resourceVersion)
	}
	key, err := c.resourceKey(kind, name)
	if err != nil {
		return nil, err
	}
	var gone KV
	_, err = c.Modify(ctx, key, DefaultRetry, func(cur KV) (Edit, error) {
		if cur.ModRevision == 0 {
			return Edit{}, notFound(kind, name, &KeyError{Key: key, Err: ErrNotFound})
		}
		if resourceVersion != "" && resourceVersion != strconv.FormatInt(cur.ModRevision, 10) {
			return Edit{}, staleError(kind, name, key, resourceVersion, cur.ModRevision)
		}
		gone = cur
		return Edit{Delete: true}, nil
	})
	if err != nil {
		if errors.Is(err, ErrTooManyConflicts) {
			return nil, fmt.Errorf("delete %s %q: %w", kind, name, err)
		}
		return nil, err
	}
	old, derr := DecodeStored(kind, name, gone.Value, gone.ModRevision)
	if derr != nil {
		// The stored document was broken; the caller still deserves to know what went.
		old, _ = NewResource(kind)
		old.Meta().Name = name
	}
	return old, nil
}

// decodePatch reads a JSON merge patch for one resource of type typ: a JSON object that
// names only fields tabby knows (example shows one in the error for anything else).
func decodePatch(kind, name string, patch []byte, typ reflect.Type, example string) (map[string]any, error) {
	p, err := decodeJSONNumbers(patch)
	if err != nil {
		return nil, fmt.Errorf("patch for %s %q is not valid JSON: %w", kind, name, err)
	}
	pm, ok := p.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("patch for %s %q must be a JSON object, such as %s", kind, name, example)
	}
	if err := checkFields(pm, typ, "", func(field, format string, args ...any) error {
		return &FieldError{Kind: kind, Name: name, Field: field, Problem: fmt.Sprintf(format, args...)}
	}); err != nil {
		return nil, fmt.Errorf("patch: %w", err)
	}
	return pm, nil
}

// PatchResource merges a JSON merge patch (RFC 7386) into the stored document, checks the
// result like any update and writes it with compare-and-swap on the revision it read. The
// patch is applied to the document as stored, so fields tabby does not model survive
// (SPEC §2a), and defaults that are not stored stay unstored; the patch itself may name
// only fields tabby knows. If the resource changes in between, the patch is applied again
// to the new version, unless the patch names a resourceVersion.
func (c *Client) PatchResource(ctx context.Context, kind, name string, patch []byte) (Resource, error) {
	if kind == KindIPAMConfiguration {
		return c.patchIPAMConfiguration(ctx, name, patch)
	}
	like, err := NewResource(kind)
	if err != nil {
		return nil, err
	}
	like.Meta().Name = name
	key, err := c.resourceKey(kind, name)
	if err != nil {
		return nil, err
	}
	pm, err := decodePatch(kind, name, patch, reflect.TypeOf(like).Elem(), `{"spec":{"ipipMode":"CrossSubnet"}}`)
	if err != nil {
		return nil, err
	}
	return c.storeResource(ctx, like, func(cur KV) (Resource, []byte, error) {
		if cur.ModRevision == 0 {
			return nil, nil, notFound(kind, name, &KeyError{Key: key, Err: ErrNotFound})
		}
		doc, err := decodeJSONNumbers(cur.Value)
		if err != nil {
			return nil, nil, fmt.Errorf("%s %q: stored document is not valid: %w", kind, name, err)
		}
		merged, ok := MergePatch(doc, pm).(map[string]any)
		if !ok {
			return nil, nil, fmt.Errorf("patch for %s %q does not leave an object", kind, name)
		}
		base, err := json.Marshal(merged)
		if err != nil {
			return nil, nil, fmt.Errorf("patched %s %q: %w", kind, name, err)
		}
		next, err := decodeDocument(kind, name, base)
		if err != nil {
			return nil, nil, fmt.Errorf("patched %w", err)
		}
		if next.ResourceKind() != kind || next.Meta().Name != name {
			return nil, nil, fmt.Errorf("a patch cannot change the kind or name of %s %q", kind, name)
		}
		if rv := next.Meta().ResourceVersion; rv != "" {
			if err := checkRV(kind, name, rv); err != nil {
				return nil, nil, err
			}
			if rv != strconv.FormatInt(cur.ModRevision, 10) {
				return nil, nil, staleError(kind, name, key, rv, cur.ModRevision)
			}
		}
		return next, base, nil
	})
}

// decodeJSONNumbers decodes JSON keeping numbers as written (json.Number), so that a
// document re-encoded after a merge patch says exactly what it said before.
func decodeJSONNumbers(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("more than one JSON value")
	}
	return v, nil
}

// MergePatch applies a JSON merge patch (RFC 7386) to a decoded JSON document: objects
// merge key by key, null deletes a key, anything else replaces. The document is not
// modified.
func MergePatch(doc, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	dm, ok := doc.(map[string]any)
	out := make(map[string]any, len(dm)+len(pm))
	if ok {
		for k, v := range dm {
			out[k] = v
		}
	}
	for k, v := range pm {
		if v == nil {
			delete(out, k)
			continue
		}
		out[k] = MergePatch(out[k], v)
	}
	return out
}

// ModifyNode reads the Node called name (a new, empty one if there is none), lets mutate
// change it, and writes it back with compare-and-swap, starting again from a fresh read if
// someone else wrote it in between. Only the fields tabby models are mutate's to change;
// every other field of the stored Node is kept (SPEC §2a). Nothing is written when mutate
// changes nothing.
func (c *Client) ModifyNode(ctx context.Context, name string, mutate func(*Node) error) (*Node, error) {
	like := NewNode(name)
	out, err := c.storeResource(ctx, like, func(cur KV) (Resource, []byte, error) {
		next := NewNode(name)
		if cur.ModRevision != 0 {
			r, err := DecodeStored(KindNode, name, cur.Value, cur.ModRevision)
			if err != nil {
				return nil, nil, err
			}
			next = r.(*Node)
		}
		if err := mutate(next); err != nil {
			return nil, nil, err
		}
		if next.Metadata.Name != name {
			return nil, nil, fmt.Errorf("modify Node %q: the mutation renamed it to %q", name, next.Metadata.Name)
		}
		if cur.ModRevision != 0 {
			after, err := encodeStoredOver(cur.Value, next)
			if err != nil {
				return nil, nil, err
			}
			if bytes.Equal(after, cur.Value) {
				return nil, nil, nil // nothing to write: the result is the stored Node
			}
		}
		return next, cur.Value, nil
	})
	if err != nil {
		return nil, err
	}
	return out.(*Node), nil
}

// writeGuard returns the extra conditions of a write. For a pool: no pool may overlap it,
// and none may change between that check and the write (the write is conditional on every
// pool key being older than the list), so two racing writers cannot create overlapping
// pools.
func (c *Client) writeGuard(ctx context.Context, r Resource) ([]clientv3.Cmp, error) {
	p, ok := r.(*IPPool)
	if !ok {
		return nil, nil
	}
	prefix := c.Keys.ResourcePrefix(KindIPPool)
	list, err := c.ListResources(ctx, KindIPPool)
	if err != nil {
		return nil, err
	}
	others := make([]*IPPool, 0, len(list.Items))
	for _, o := range list.Items {
		others = append(others, o.(*IPPool))
	}
	if err := poolOverlap(p, others); err != nil {
		return nil, err
	}
	return []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(prefix), "<", list.Revision+1).WithPrefix()}, nil
}

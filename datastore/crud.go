package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxCASRetries bounds every read-modify-write loop: past it, something keeps writing the
// same key and the caller should hear about it rather than spin.
const maxCASRetries = 10

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
	in := cloneResource(r)
	kind, name := in.ResourceKind(), in.Meta().Name
	key, err := c.resourceKey(kind, name)
	if err != nil {
		return nil, err
	}
	if err := Validate(in); err != nil {
		return nil, err
	}
	m := in.Meta()
	m.UID = uuid.NewString()
	m.CreationTimestamp = time.Now().UTC().Format(time.RFC3339)
	m.ResourceVersion = ""
	setStoreDefaults(in)
	value, err := EncodeStored(in)
	if err != nil {
		return nil, err
	}
	for range maxCASRetries {
		guard, err := c.writeGuard(ctx, in)
		if err != nil {
			return nil, err
		}
		cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.Version(key), "=", 0)}, guard...)
		res, err := c.putIf(ctx, key, value, cmps)
		if err != nil {
			return nil, fmt.Errorf("create %s %q: %w", kind, name, err)
		}
		if res.ok {
			return DecodeStored(kind, name, value, res.rev)
		}
		if res.exists {
			return nil, fmt.Errorf("%s %q: %w", kind, name, &KeyError{Key: key, Err: ErrAlreadyExists})
		}
		// Another pool was written while we checked for overlaps: check again.
	}
	return nil, fmt.Errorf("create %s %q: other writers kept changing the pools; try again", kind, name)
}

// UpdateResource replaces a stored resource with r. When r carries a resourceVersion it is
// the compare-and-swap condition: a resource changed since is an error wrapping ErrConflict
// (nothing is written). Without one, r replaces whatever is stored (as calicoctl replace
// does), retrying if the resource changes while it is written. The stored uid and
// creationTimestamp are kept; the rules of SPEC §3 are checked, including a pool's
// immutable cidr and blockSize and its overlap with other pools.
func (c *Client) UpdateResource(ctx context.Context, r Resource) (Resource, error) {
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
	if wantRV != "" {
		if _, err := strconv.ParseInt(wantRV, 10, 64); err != nil {
			return nil, &FieldError{Kind: kind, Name: name, Field: "metadata.resourceVersion", Problem: fmt.Sprintf("%q is not a revision number", wantRV)}
		}
	}
	for range maxCASRetries {
		kv, err := c.Get(ctx, key)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil, notFound(kind, name, err)
			}
			return nil, err
		}
		if wantRV != "" && wantRV != strconv.FormatInt(kv.ModRevision, 10) {
			return nil, staleError(kind, name, key, wantRV, kv.ModRevision)
		}
		next := cloneResource(in)
		nm := next.Meta()
		nm.ResourceVersion = ""
		nm.UID, nm.CreationTimestamp = "", ""
		// A stored document that does not decode (written by hand) is simply replaced.
		if cur, err := DecodeStored(kind, name, kv.Value, kv.ModRevision); err == nil {
			nm.UID, nm.CreationTimestamp = cur.Meta().UID, cur.Meta().CreationTimestamp
			if err := checkChange(cur, next); err != nil {
				return nil, err
			}
		}
		if nm.UID == "" {
			nm.UID = uuid.NewString()
		}
		if nm.CreationTimestamp == "" {
			nm.CreationTimestamp = time.Now().UTC().Format(time.RFC3339)
		}
		setStoreDefaults(next)
		value, err := EncodeStored(next)
		if err != nil {
			return nil, err
		}
		guard, err := c.writeGuard(ctx, next)
		if err != nil {
			return nil, err
		}
		cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)}, guard...)
		res, err := c.putIf(ctx, key, value, cmps)
		if err != nil {
			return nil, fmt.Errorf("update %s %q: %w", kind, name, err)
		}
		switch {
		case res.ok:
			return DecodeStored(kind, name, value, res.rev)
		case !res.exists:
			return nil, notFound(kind, name, &KeyError{Key: key, Err: ErrNotFound})
		case res.modRevision != kv.ModRevision && wantRV != "":
			return nil, staleError(kind, name, key, wantRV, res.modRevision)
		}
		// The resource or another pool changed between our read and our write: read again.
	}
	return nil, fmt.Errorf("update %s %q: %w", kind, name, &KeyError{Key: key, Err: ErrConflict})
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
	key, err := c.resourceKey(kind, name)
	if err != nil {
		return nil, err
	}
	for range maxCASRetries {
		kv, err := c.Get(ctx, key)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil, notFound(kind, name, err)
			}
			return nil, err
		}
		if resourceVersion != "" && resourceVersion != strconv.FormatInt(kv.ModRevision, 10) {
			return nil, staleError(kind, name, key, resourceVersion, kv.ModRevision)
		}
		err = c.Delete(ctx, key, kv.ModRevision)
		switch {
		case err == nil:
			old, derr := DecodeStored(kind, name, kv.Value, kv.ModRevision)
			if derr != nil {
				// The stored document was broken; the caller still deserves to know what went.
				old, _ = NewResource(kind)
				old.Meta().Name = name
			}
			return old, nil
		case errors.Is(err, ErrNotFound):
			return nil, notFound(kind, name, err)
		case errors.Is(err, ErrConflict) && resourceVersion == "":
			continue
		default:
			return nil, fmt.Errorf("delete %s %q: %w", kind, name, err)
		}
	}
	return nil, fmt.Errorf("delete %s %q: %w", kind, name, &KeyError{Key: key, Err: ErrConflict})
}

// PatchResource merges a JSON merge patch (RFC 7386) into the stored resource, checks the
// result like any update and writes it with compare-and-swap on the revision it read. If
// the resource changes in between, the patch is applied again to the new version, unless
// the patch itself names a resourceVersion.
func (c *Client) PatchResource(ctx context.Context, kind, name string, patch []byte) (Resource, error) {
	var p any
	if err := json.Unmarshal(patch, &p); err != nil {
		return nil, fmt.Errorf("patch for %s %q is not valid JSON: %w", kind, name, err)
	}
	if _, ok := p.(map[string]any); !ok {
		return nil, fmt.Errorf("patch for %s %q must be a JSON object, such as {\"spec\":{\"ipipMode\":\"CrossSubnet\"}}", kind, name)
	}
	for range maxCASRetries {
		cur, err := c.GetResource(ctx, kind, name)
		if err != nil {
			return nil, err
		}
		doc, err := toGeneric(cur)
		if err != nil {
			return nil, err
		}
		merged, ok := MergePatch(doc, p).(map[string]any)
		if !ok {
			return nil, fmt.Errorf("patch for %s %q does not leave an object", kind, name)
		}
		next, err := decodeManifestObject(merged)
		if err != nil {
			return nil, fmt.Errorf("patched %w", err)
		}
		if next.ResourceKind() != kind || next.Meta().Name != name {
			return nil, fmt.Errorf("a patch cannot change the kind or name of %s %q", kind, name)
		}
		out, err := c.UpdateResource(ctx, next)
		if errors.Is(err, ErrConflict) && next.Meta().ResourceVersion == cur.Meta().ResourceVersion && !patchSetsRV(p) {
			continue
		}
		return out, err
	}
	return nil, fmt.Errorf("patch %s %q: %w", kind, name, &KeyError{Key: c.Keys.Resource(kind, name), Err: ErrConflict})
}

func patchSetsRV(p any) bool {
	m, _ := p.(map[string]any)
	meta, _ := m["metadata"].(map[string]any)
	_, ok := meta["resourceVersion"]
	return ok
}

func toGeneric(r Resource) (map[string]any, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode %s %q: %w", r.ResourceKind(), r.Meta().Name, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode %s %q: %w", r.ResourceKind(), r.Meta().Name, err)
	}
	return m, nil
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
// someone else wrote it in between. Nothing is written when mutate changes nothing. This
// is how tabbyd keeps its own Node up to date without overwriting what others set.
func (c *Client) ModifyNode(ctx context.Context, name string, mutate func(*Node) error) (*Node, error) {
	for range maxCASRetries {
		cur, err := c.GetNode(ctx, name)
		exists := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		next := NewNode(name)
		if exists {
			next = Clone(cur)
		}
		if err := mutate(next); err != nil {
			return nil, err
		}
		if next.Metadata.Name != name {
			return nil, fmt.Errorf("modify Node %q: the mutation renamed it to %q", name, next.Metadata.Name)
		}
		if !exists {
			created, err := c.CreateNode(ctx, next)
			if errors.Is(err, ErrAlreadyExists) {
				continue
			}
			return created, err
		}
		before, err1 := EncodeStored(cur)
		after, err2 := EncodeStored(next)
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		if string(before) == string(after) {
			return cur, nil
		}
		next.Metadata.ResourceVersion = cur.Metadata.ResourceVersion
		updated, err := c.UpdateNode(ctx, next)
		if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
			continue
		}
		return updated, err
	}
	return nil, fmt.Errorf("modify Node %q: %w", name, &KeyError{Key: c.Keys.Resource(KindNode, name), Err: ErrConflict})
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

// putResult says how a conditional put went, and when it did not happen, what the key
// looked like.
type putResult struct {
	ok          bool
	rev         int64 // revision of the write
	exists      bool  // when !ok: the key exists
	modRevision int64 // when !ok and exists: its revision
}

func (c *Client) putIf(ctx context.Context, key string, value []byte, cmps []clientv3.Cmp) (putResult, error) {
	resp, err := c.etcd.Txn(ctx).If(cmps...).
		Then(clientv3.OpPut(key, string(value))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return putResult{}, Denied(err, key)
	}
	if resp.Succeeded {
		return putResult{ok: true, rev: resp.Header.Revision}, nil
	}
	var res putResult
	if len(resp.Responses) == 1 {
		if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) == 1 {
			res.exists = true
			res.modRevision = r.Kvs[0].ModRevision
		}
	}
	return res, nil
}

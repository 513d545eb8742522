package datastore

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// DecodeStored decodes a resource document read from etcd under the key of kind and name.
// Fields tabby does not know are ignored (Calico writes more than tabby reads); defaults are
// applied; resourceVersion is set from the key's ModRevision. The document must be a JSON
// object whose kind and name, if given, agree with the key.
func DecodeStored(kind, name string, value []byte, modRevision int64) (Resource, error) {
	r, err := NewResource(kind)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(value, r); err != nil {
		return nil, fmt.Errorf("%s %q: stored document is not valid: %w", kind, name, err)
	}
	m := r.Meta()
	if k := kindOfDocument(r); k != "" && k != kind {
		return nil, fmt.Errorf("%s %q: stored document says kind %q", kind, name, k)
	}
	if m.Name == "" {
		m.Name = name
	} else if m.Name != name {
		return nil, fmt.Errorf("%s %q: stored document says metadata.name %q", kind, name, m.Name)
	}
	m.ResourceVersion = strconv.FormatInt(modRevision, 10)
	SetDefaults(r)
	return r, nil
}

func kindOfDocument(r Resource) string {
	switch r := r.(type) {
	case *IPPool:
		return r.Kind
	case *BGPConfiguration:
		return r.Kind
	case *BGPPeer:
		return r.Kind
	case *Node:
		return r.Kind
	case *IPAMConfiguration:
		return r.Kind
	case *IPReservation:
		return r.Kind
	}
	return ""
}

// EncodeStored renders a resource as Calico stores it: compact JSON in Calico's field
// order, with kind and apiVersion, and without resourceVersion (which lives in etcd's
// ModRevision).
func EncodeStored(r Resource) ([]byte, error) { return encodeStoredOver(nil, r) }

// encodeStoredOver is EncodeStored written over a stored document: the fields tabby models
// are r's, every other field of stored is kept (see Overlay).
func encodeStoredOver(stored []byte, r Resource) ([]byte, error) {
	c := cloneResource(r)
	setTypeMeta(c)
	c.Meta().ResourceVersion = ""
	b, err := Overlay(stored, c)
	if err != nil {
		return nil, fmt.Errorf("encode %s %q: %w", r.ResourceKind(), r.Meta().Name, err)
	}
	return b, nil
}

// decodeDocument decodes a resource document that may carry fields tabby does not model
// (they are ignored here and kept by the write, see Overlay), without applying defaults.
// A value of the wrong type is a *FieldError naming the field.
func decodeDocument(kind, name string, value []byte) (Resource, error) {
	r, err := NewResource(kind)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(value, r); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, &FieldError{Kind: kind, Name: name, Field: te.Field, Problem: fmt.Sprintf("expected %s, found %s", goTypeName(te.Type), jsonValueName(te.Value))}
		}
		return nil, &FieldError{Kind: kind, Name: name, Problem: err.Error()}
	}
	return r, nil
}

func setTypeMeta(r Resource) {
	tm := TypeMeta{Kind: r.ResourceKind(), APIVersion: APIVersion}
	switch r := r.(type) {
	case *IPPool:
		r.TypeMeta = tm
	case *BGPConfiguration:
		r.TypeMeta = tm
	case *BGPPeer:
		r.TypeMeta = tm
	case *Node:
		r.TypeMeta = tm
	case *IPAMConfiguration:
		r.TypeMeta = tm
	case *IPReservation:
		r.TypeMeta = tm
	}
}

// cloneResource returns a deep copy. The resource types are plain data, so a JSON round
// trip copies them exactly.
func cloneResource(r Resource) Resource {
	b, err := json.Marshal(r)
	if err != nil {
		panic(fmt.Sprintf("datastore: a %s does not encode: %v", r.ResourceKind(), err))
	}
	c, err := NewResource(r.ResourceKind())
	if err != nil {
		panic(err)
	}
	if err := json.Unmarshal(b, c); err != nil {
		panic(fmt.Sprintf("datastore: a %s does not decode its own encoding: %v", r.ResourceKind(), err))
	}
	return c
}

// Clone returns a deep copy of a resource, for callers that want to change a resource
// taken from a shared Snapshot.
func Clone[R Resource](r R) R { return cloneResource(r).(R) }

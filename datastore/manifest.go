package datastore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Two decoders, for two kinds of reader. Manifests (tabbyctl's input) are decoded strictly:
// an unknown field is a typo the user wants to hear about, as calicoctl reports it. Stored
// documents (DecodeStored) are decoded tolerantly: Calico writes fields tabby does not know,
// and a daemon must not refuse a pool because it carries one.

// DecodeManifests decodes every resource in a YAML or JSON stream: one or many YAML
// documents separated by "---", one or more JSON objects, a sequence of resources, or a
// Kubernetes-style list ("kind: List" or "kind: IPPoolList" with items). Every resource
// must have apiVersion projectcalico.org/v3 and a known kind; an unknown field is an error
// naming it. Resources keep the resourceVersion the manifest gives (the CAS condition of an
// update). Defaults are not applied and rules are not checked: see Validate.
//
// YAML scalars are read as the field they land in expects: "name: no" is the name "no"
// and "asNumber: 1.10" the dotted AS number 1.10, not a boolean and a float.
func DecodeManifests(data []byte) ([]Resource, error) {
	docs, err := parseManifestStream(data)
	if err != nil {
		return nil, err
	}
	var out []Resource
	for i, v := range docs {
		where := fmt.Sprintf("document %d", i+1)
		if len(docs) == 1 {
			where = "the document"
		}
		rs, err := decodeManifestValue(v, where)
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

// DecodeManifest decodes a stream that must hold exactly one resource.
func DecodeManifest(data []byte) (Resource, error) {
	rs, err := DecodeManifests(data)
	if err != nil {
		return nil, err
	}
	if len(rs) != 1 {
		return nil, fmt.Errorf("expected one resource, found %d", len(rs))
	}
	return rs[0], nil
}

// parseManifestStream parses a stream into one generic JSON value per document, dropping
// empty documents. Input that looks like JSON is first read as a stream of JSON values (so
// that tab-indented JSON and "{…}{…}" work); if that fails it is read as YAML, whose
// errors are the clearer ones.
func parseManifestStream(data []byte) ([]any, error) {
	if t := bytes.TrimSpace(data); len(t) > 0 && (t[0] == '{' || t[0] == '[') {
		if values, err := parseJSONStream(t); err == nil {
			return values, nil
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []any
	for i := 1; ; i++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: malformed YAML: %v", i, err)
		}
		v, err := manifestValue(&n, "")
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if v != nil {
			out = append(out, v)
		}
	}
}

func parseJSONStream(data []byte) ([]any, error) {
	var values []any
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		var v any
		err := dec.Decode(&v)
		if err == io.EOF {
			return values, nil
		}
		if err != nil {
			return nil, err
		}
		values = append(values, v)
	}
}

// manifestValue converts a YAML document, resource, list or sequence of resources to a
// generic JSON value, reading each resource's scalars as its Go type expects.
// fallbackKind is the kind of the items of a typed list, which may leave theirs out.
func manifestValue(n *yaml.Node, fallbackKind string) (any, error) {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, nil
		}
		return manifestValue(n.Content[0], fallbackKind)
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for _, item := range n.Content {
			v, err := manifestValue(item, fallbackKind)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case yaml.MappingNode:
		kind := fallbackKind
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Value == "kind" && n.Content[i+1].Kind == yaml.ScalarNode {
				kind = n.Content[i+1].Value
			}
		}
		if isListKind(kind) {
			return listValue(n, strings.TrimSuffix(kind, "List"))
		}
		var t reflect.Type
		if r, err := NewResource(kind); err == nil {
			t = reflect.TypeOf(r)
		}
		return yamlValue(n, t)
	}
	return yamlValue(n, nil)
}

func listValue(n *yaml.Node, elemKind string) (any, error) {
	out := map[string]any{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if _, dup := out[k.Value]; dup {
			return nil, fmt.Errorf("line %d: key %q appears twice", k.Line, k.Value)
		}
		var (
			val any
			err error
		)
		if k.Value == "items" && v.Kind == yaml.SequenceNode {
			val, err = manifestValue(v, elemKind)
		} else {
			val, err = yamlValue(v, nil)
		}
		if err != nil {
			return nil, err
		}
		out[k.Value] = val
	}
	return out, nil
}

// yamlValue converts a YAML node to the generic value encoding/json would produce for the
// equivalent JSON, guided by the Go type t the value will be decoded into (nil: unknown).
// A scalar headed for a string, or for a type with its own JSON decoder (AS numbers,
// durations), keeps its text as written.
func yamlValue(n *yaml.Node, t reflect.Type) (any, error) {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.AliasNode:
		// Expanding aliases by hand would let a small hostile document grow exponentially.
		return nil, fmt.Errorf("line %d: YAML aliases (*%s) are not supported in manifests", n.Line, n.Value)
	case yaml.MappingNode:
		var fields map[string]reflect.Type
		if t != nil && t.Kind() == reflect.Struct {
			fields = jsonFields(t)
		}
		out := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: a mapping key must be a plain string", k.Line)
			}
			if k.Tag == "!!merge" {
				return nil, fmt.Errorf("line %d: YAML merge keys (<<) are not supported in manifests", k.Line)
			}
			if _, dup := out[k.Value]; dup {
				return nil, fmt.Errorf("line %d: key %q appears twice", k.Line, k.Value)
			}
			var ft reflect.Type
			switch {
			case fields != nil:
				ft = fields[k.Value]
			case t != nil && t.Kind() == reflect.Map:
				ft = t.Elem()
			}
			val, err := yamlValue(v, ft)
			if err != nil {
				return nil, err
			}
			out[k.Value] = val
		}
		return out, nil
	case yaml.SequenceNode:
		var et reflect.Type
		if t != nil && t.Kind() == reflect.Slice {
			et = t.Elem()
		}
		out := make([]any, 0, len(n.Content))
		for _, item := range n.Content {
			v, err := yamlValue(item, et)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return nil, nil
		}
		if t != nil && (t.Kind() == reflect.String || reflect.PointerTo(t).Implements(jsonUnmarshalerType)) {
			return n.Value, nil
		}
		var v any
		if err := n.Decode(&v); err != nil {
			return nil, fmt.Errorf("line %d: %v", n.Line, err)
		}
		if _, isTime := v.(interface{ UnixNano() int64 }); isTime {
			return n.Value, nil
		}
		return v, nil
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, nil
		}
		return yamlValue(n.Content[0], t)
	}
	return nil, fmt.Errorf("line %d: unsupported YAML node", n.Line)
}

func decodeManifestValue(v any, where string) ([]Resource, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil // an empty document
	case []any:
		var out []Resource
		for i, item := range v {
			rs, err := decodeManifestValue(item, fmt.Sprintf("%s, item %d", where, i+1))
			if err != nil {
				return nil, err
			}
			out = append(out, rs...)
		}
		return out, nil
	case map[string]any:
		kind, _ := v["kind"].(string)
		if isListKind(kind) {
			return decodeList(v, kind, where)
		}
		r, err := decodeManifestObject(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		return []Resource{r}, nil
	default:
		return nil, fmt.Errorf("%s: expected a resource (a mapping with apiVersion, kind, metadata and spec), found %s", where, jsonTypeName(v))
	}
}

// isListKind recognises "List" and "<Kind>List", the lists calicoctl and tabbyctl print.
func isListKind(kind string) bool {
	if kind == "List" {
		return true
	}
	elem, ok := strings.CutSuffix(kind, "List")
	return ok && knownKind(elem)
}

func decodeList(v map[string]any, kind, where string) ([]Resource, error) {
	for _, k := range slices.Sorted(maps.Keys(v)) {
		if k != "apiVersion" && k != "kind" && k != "metadata" && k != "items" {
			return nil, fmt.Errorf("%s: %s: unknown field %q", where, kind, k)
		}
	}
	items, ok := v["items"].([]any)
	if !ok && v["items"] != nil {
		return nil, fmt.Errorf("%s: %s: items must be a list, found %s", where, kind, jsonTypeName(v["items"]))
	}
	elemKind := strings.TrimSuffix(kind, "List")
	var out []Resource
	for i, item := range items {
		itemWhere := fmt.Sprintf("%s, item %d", where, i+1)
		m, ok := item.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: expected a resource, found %s", itemWhere, jsonTypeName(item))
		}
		// A typed list's items may leave out their kind and apiVersion.
		if elemKind != "" {
			if _, has := m["kind"]; !has {
				m["kind"] = elemKind
			}
			if _, has := m["apiVersion"]; !has {
				m["apiVersion"] = APIVersion
			}
		}
		r, err := decodeManifestObject(m)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", itemWhere, err)
		}
		if elemKind != "" && r.ResourceKind() != elemKind {
			return nil, fmt.Errorf("%s: a %s holds %s resources, not %s", itemWhere, kind, elemKind, r.ResourceKind())
		}
		out = append(out, r)
	}
	return out, nil
}

func decodeManifestObject(v map[string]any) (Resource, error) {
	kind, _ := v["kind"].(string)
	r, err := NewResource(kind)
	if err != nil {
		return nil, err
	}
	name := ""
	if m, ok := v["metadata"].(map[string]any); ok {
		name, _ = m["name"].(string)
	}
	fail := func(field, format string, args ...any) error {
		return &FieldError{Kind: kind, Name: name, Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	switch av := v["apiVersion"].(type) {
	case string:
		if av != APIVersion {
			return nil, fail("apiVersion", "%q is not supported: use %s", av, APIVersion)
		}
	case nil:
		return nil, fail("apiVersion", "required: use %s", APIVersion)
	default:
		return nil, fail("apiVersion", "must be a string, found %s", jsonTypeName(av))
	}
	if _, ok := v["metadata"].(map[string]any); !ok {
		return nil, fail("metadata", "required: a mapping with at least a name")
	}
	if err := checkFields(v, reflect.TypeOf(r).Elem(), "", fail); err != nil {
		return nil, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("re-encode %s %q: %w", kind, name, err)
	}
	if err := json.Unmarshal(b, r); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fail(te.Field, "expected %s, found %s", goTypeName(te.Type), jsonValueName(te.Value))
		}
		return nil, fail("", "%v", err)
	}
	return r, nil
}

// metadataTolerated are fields of Kubernetes' ObjectMeta that tabby does not keep but that a
// manifest exported from Kubernetes or calicoctl may carry; they are accepted and dropped.
var metadataTolerated = []string{
	"namespace", "generation", "generateName", "selfLink", "managedFields",
	"ownerReferences", "finalizers", "deletionTimestamp", "deletionGracePeriodSeconds",
}

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	objectMetaType      = reflect.TypeFor[ObjectMeta]()
)

// checkFields walks a decoded JSON value against the Go type it will be decoded into and
// reports every field the type does not have, by its dotted path (encoding/json would
// either ignore it or, with DisallowUnknownFields, name it without its path; it also
// matches field names case-insensitively, so "ipipmode" would silently count). Values of
// types with their own decoder (AS numbers, durations) are decoded here so that their
// errors name the field too. Type mismatches are left to encoding/json, which names them.
func checkFields(v any, t reflect.Type, path string, fail func(field, format string, args ...any) error) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshalerType) {
		if v == nil {
			return nil
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fail(path, "%v", err)
		}
		if err := reflect.New(t).Interface().(json.Unmarshaler).UnmarshalJSON(b); err != nil {
			return fail(path, "%v", err)
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		fields := jsonFields(t)
		var unknown []string
		for _, k := range slices.Sorted(maps.Keys(m)) {
			ft, ok := fields[k]
			if !ok {
				if t == objectMetaType && slices.Contains(metadataTolerated, k) {
					continue
				}
				unknown = append(unknown, k)
				continue
			}
			if err := checkFields(m[k], ft, joinPath(path, k), fail); err != nil {
				return err
			}
		}
		if len(unknown) > 0 {
			var msgs []string
			for _, k := range unknown {
				msg := strconv.Quote(joinPath(path, k))
				for _, known := range slices.Sorted(maps.Keys(fields)) {
					if strings.EqualFold(known, k) {
						msg += fmt.Sprintf(" (did you mean %q?)", known)
					}
				}
				msgs = append(msgs, msg)
			}
			noun := "unknown field"
			if len(msgs) > 1 {
				noun = "unknown fields"
			}
			return fail("", "%s %s", noun, strings.Join(msgs, ", "))
		}
	case reflect.Slice:
		items, ok := v.([]any)
		if !ok {
			return nil
		}
		for i, item := range items {
			if err := checkFields(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i), fail); err != nil {
				return err
			}
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if err := checkFields(m[k], t.Elem(), fmt.Sprintf("%s[%q]", path, k), fail); err != nil {
				return err
			}
		}
	}
	return nil
}

// jsonFields maps the JSON names of a struct's fields (including those of embedded structs
// without a name of their own, such as TypeMeta) to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if f.Anonymous && name == "" {
			for k, v := range jsonFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

func joinPath(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func jsonTypeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case float64, int:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}

// goTypeName says in a user's words what a Go field holds.
func goTypeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return fmt.Sprintf("a whole number (%s)", t.Kind())
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	}
	return t.String()
}

// jsonValueName turns encoding/json's name of a JSON value into a user's words.
func jsonValueName(v string) string {
	switch {
	case v == "object":
		return "a mapping"
	case v == "array":
		return "a list"
	case v == "bool":
		return "a boolean"
	case strings.HasPrefix(v, "number"):
		return "the " + v
	}
	return "a " + v
}

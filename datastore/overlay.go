package datastore

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
)

// Overlay encodes v as JSON over the document stored before (SPEC §2a: nothing tabby
// writes may drop a field it does not model). The fields of v's type are the ones the
// caller owns; everything else in stored survives, at every depth:
//
//   - A struct is written over the stored object member by member. A stored member that
//     the struct does not model is kept as stored, in its place. A member the struct
//     models gets v's value, or is removed when v leaves an omitempty field empty (the
//     caller cleared it). Owned members the stored object lacks are appended in the
//     struct's field order. Names match as encoding/json decodes them: exactly, else in
//     any case.
//   - A map is owned as a whole (keys v lacks are removed); where its values are structs,
//     each is overlaid on the stored value under the same key.
//   - A slice of structs or maps is owned as a whole; each element is overlaid on the
//     stored element it came from: the one whose owned fields are unchanged (so elements
//     that were removed or renumbered take nothing of someone else's), else the one at
//     the same position.
//   - Anything else (numbers, strings, slices of scalars, types with their own JSON or
//     text encoding) is encoded by encoding/json and replaces the stored value.
//
// When stored is empty or not a JSON object, the result is json.Marshal(v), byte for
// byte. Overlaying a value decoded from stored, unchanged, returns stored's meaning
// unchanged (compare as JSON values: owned numbers and strings are re-encoded).
func Overlay(stored []byte, v any) ([]byte, error) {
	rv := reflect.ValueOf(v)
	var buf bytes.Buffer
	if err := overlayValue(&buf, jsontext.Value(bytes.TrimSpace(stored)), rv); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

var (
	jsonMarshaler = reflect.TypeFor[json.Marshaler]()
	textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()
)

// leaf reports whether values of t are encoded whole by encoding/json: they have no
// members of their own that someone else could have extended.
func leaf(t reflect.Type) bool {
	if t.Implements(jsonMarshaler) || t.Implements(textMarshaler) ||
		reflect.PointerTo(t).Implements(jsonMarshaler) || reflect.PointerTo(t).Implements(textMarshaler) {
		return true
	}
	switch t.Kind() {
	case reflect.Struct:
		return false
	case reflect.Pointer:
		return leaf(t.Elem())
	case reflect.Map:
		return t.Key().Kind() != reflect.String || leaf(t.Elem())
	case reflect.Slice, reflect.Array:
		return t.Elem().Kind() == reflect.Uint8 || leaf(t.Elem())
	}
	return true
}

func overlayValue(buf *bytes.Buffer, stored jsontext.Value, v reflect.Value) error {
	if !v.IsValid() {
		buf.WriteString("null")
		return nil
	}
	t := v.Type()
	if leaf(t) {
		return encodeLeaf(buf, v)
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			buf.WriteString("null")
			return nil
		}
		return overlayValue(buf, stored, v.Elem())
	case reflect.Struct:
		return overlayStruct(buf, stored, v)
	case reflect.Map:
		return overlayMap(buf, stored, v)
	case reflect.Slice, reflect.Array:
		return overlaySlice(buf, stored, v)
	}
	return encodeLeaf(buf, v)
}

func encodeLeaf(buf *bytes.Buffer, v reflect.Value) error {
	x := v.Interface()
	if v.Kind() != reflect.Pointer && v.CanAddr() {
		// A method on the pointer receiver is what encoding/json calls for an
		// addressable field.
		x = v.Addr().Interface()
	}
	b, err := json.Marshal(x)
	if err != nil {
		return fmt.Errorf("encode %s: %w", v.Type(), err)
	}
	buf.Write(b)
	return nil
}

// member is one name/value pair of a stored JSON object.
type member struct {
	name  string
	value jsontext.Value
}

// objectMembers splits a stored JSON object into its members, in order. A value that is
// not an object has none (ok false): the caller's value then replaces it.
func objectMembers(stored jsontext.Value) ([]member, bool) {
	if len(stored) == 0 || stored[0] != '{' {
		return nil, false
	}
	dec := jsontext.NewDecoder(bytes.NewReader(stored), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	if _, err := dec.ReadToken(); err != nil {
		return nil, false
	}
	var out []member
	for dec.PeekKind() != '}' {
		tok, err := dec.ReadToken()
		if err != nil {
			return nil, false
		}
		name := tok.String() // before the next read, which invalidates tok
		val, err := dec.ReadValue()
		if err != nil {
			return nil, false
		}
		out = append(out, member{name: name, value: inputSpan(stored, dec, len(val))})
	}
	return out, true
}

// arrayElements splits a stored JSON array into its elements.
func arrayElements(stored jsontext.Value) []jsontext.Value {
	if len(stored) == 0 || stored[0] != '[' {
		return nil
	}
	dec := jsontext.NewDecoder(bytes.NewReader(stored), jsontext.AllowInvalidUTF8(true))
	if _, err := dec.ReadToken(); err != nil {
		return nil
	}
	var out []jsontext.Value
	for dec.PeekKind() != ']' {
		val, err := dec.ReadValue()
		if err != nil {
			return nil
		}
		out = append(out, inputSpan(stored, dec, len(val)))
	}
	return out
}

// inputSpan returns the n bytes the decoder just read, as a slice of its input (the
// decoder's own copy is valid only until its next read).
func inputSpan(in []byte, dec *jsontext.Decoder, n int) jsontext.Value {
	end := int(dec.InputOffset())
	return jsontext.Value(in[end-n : end : end])
}

// field is one JSON member a struct type models.
type field struct {
	name      string
	index     []int
	omitEmpty bool
}

// structFields lists the JSON members of a struct type as encoding/json sees them:
// exported fields under their tag names, untagged embedded structs inlined. (Not cached:
// a write looks at a handful of structs, and a cache would be state shared by every
// client in the process.)
func structFields(t reflect.Type) []field {
	var fs []field
	var walk func(t reflect.Type, index []int)
	walk = func(t reflect.Type, index []int) {
		for i := range t.NumField() {
			sf := t.Field(i)
			tag := sf.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			idx := append(slices.Clone(index), i)
			if sf.Anonymous && name == "" && sf.Type.Kind() == reflect.Struct {
				walk(sf.Type, idx)
				continue
			}
			if !sf.IsExported() {
				continue
			}
			if name == "" {
				name = sf.Name
			}
			fs = append(fs, field{name: name, index: idx, omitEmpty: slices.Contains(strings.Split(opts, ","), "omitempty")})
		}
	}
	walk(t, nil)
	return fs
}

// isEmpty is encoding/json's test for omitempty.
func isEmpty(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Array, reflect.Map, reflect.Slice, reflect.String:
		return v.Len() == 0
	case reflect.Bool,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64,
		reflect.Interface, reflect.Pointer:
		return v.IsZero()
	}
	return false
}

// fieldFor finds the owned field a stored member name decodes into: the exact name, else
// the first that matches in any case (as encoding/json decodes).
func fieldFor(fs []field, name string) int {
	if i := slices.IndexFunc(fs, func(f field) bool { return f.name == name }); i >= 0 {
		return i
	}
	return slices.IndexFunc(fs, func(f field) bool { return strings.EqualFold(f.name, name) })
}

func overlayStruct(buf *bytes.Buffer, stored jsontext.Value, v reflect.Value) error {
	fs := structFields(v.Type())
	members, _ := objectMembers(stored)
	written := make([]bool, len(fs))
	buf.WriteByte('{')
	first := true
	put := func(name string, write func() error) error {
		if !first {
			buf.WriteByte(',')
		}
		first = false
		b, err := jsontext.AppendQuote(nil, name)
		if err != nil {
			return fmt.Errorf("member name %q: %w", name, err)
		}
		buf.Write(b)
		buf.WriteByte(':')
		return write()
	}
	for _, m := range members {
		i := fieldFor(fs, m.name)
		if i < 0 {
			// Not ours: kept as stored.
			if err := put(m.name, func() error { buf.Write(m.value); return nil }); err != nil {
				return err
			}
			continue
		}
		if written[i] {
			continue // a duplicate of an owned member: the owned value is written once
		}
		written[i] = true
		f := fs[i]
		fv := v.FieldByIndex(f.index)
		if f.omitEmpty && isEmpty(fv) {
			continue // owned and cleared
		}
		if err := put(f.name, func() error { return overlayValue(buf, m.value, fv) }); err != nil {
			return err
		}
	}
	for i, f := range fs {
		if written[i] {
			continue
		}
		fv := v.FieldByIndex(f.index)
		if f.omitEmpty && isEmpty(fv) {
			continue
		}
		if err := put(f.name, func() error { return overlayValue(buf, nil, fv) }); err != nil {
			return err
		}
	}
	buf.WriteByte('}')
	return nil
}

func overlayMap(buf *bytes.Buffer, stored jsontext.Value, v reflect.Value) error {
	if v.IsNil() {
		buf.WriteString("null")
		return nil
	}
	members, _ := objectMembers(stored)
	old := make(map[string]jsontext.Value, len(members))
	for _, m := range members {
		old[m.name] = m.value
	}
	keys := make([]string, 0, v.Len())
	for _, k := range v.MapKeys() {
		keys = append(keys, k.String())
	}
	slices.Sort(keys) // encoding/json's order
	buf.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		b, err := jsontext.AppendQuote(nil, k)
		if err != nil {
			return fmt.Errorf("map key %q: %w", k, err)
		}
		buf.Write(b)
		buf.WriteByte(':')
		if err := overlayValue(buf, old[k], v.MapIndex(reflect.ValueOf(k).Convert(v.Type().Key()))); err != nil {
			return err
		}
	}
	buf.WriteByte('}')
	return nil
}

// overlaySlice overlays each element on the stored element it came from; see Overlay.
func overlaySlice(buf *bytes.Buffer, stored jsontext.Value, v reflect.Value) error {
	if v.Kind() == reflect.Slice && v.IsNil() {
		buf.WriteString("null")
		return nil
	}
	// The plain encoding of the whole slice, once: most writes leave a slice as it was
	// stored, and then it is written as stored.
	all, err := json.Marshal(v.Interface())
	if err != nil {
		return fmt.Errorf("encode %s: %w", v.Type(), err)
	}
	if bytes.Equal(all, stored) || appended(stored, all) {
		buf.Write(all)
		return nil
	}
	olds := arrayElements(stored)
	if len(olds) == 0 {
		buf.Write(all)
		return nil
	}
	n := v.Len()
	plain := arrayElements(all)
	if len(plain) != n {
		return fmt.Errorf("encode %s: %d elements encode as %d", v.Type(), n, len(plain))
	}
	source := matchElements(olds, plain, v.Type().Elem())
	buf.WriteByte('[')
	for i := range n {
		if i > 0 {
			buf.WriteByte(',')
		}
		j := source[i]
		switch {
		case j < 0:
			buf.Write(plain[i])
		case bytes.Equal(olds[j], plain[i]):
			buf.Write(olds[j])
		default:
			if err := overlayValue(buf, olds[j], v.Index(i)); err != nil {
				return err
			}
		}
	}
	buf.WriteByte(']')
	return nil
}

// appended reports whether array all is array stored with elements added at its end
// (what an assignment does to a block's attributes): the stored elements are then all
// still there, unchanged, and have nothing of anyone else's.
func appended(stored, all []byte) bool {
	n := len(stored)
	return n > 2 && len(all) > n && stored[n-1] == ']' && all[n-1] == ',' && bytes.Equal(all[:n-1], stored[:n-1])
}

// matchElements finds, for each new element (given as its plain encoding), the index of
// the stored element it came from, or -1: first the stored elements whose owned fields
// encode the same (byte-identical ones need no decoding), preferring the same position;
// then, for the rest, the stored element at the same position if nothing else took it.
func matchElements(olds, plain []jsontext.Value, elem reflect.Type) []int {
	source := make([]int, len(plain))
	for i := range source {
		source[i] = -1
	}
	if len(olds) == 0 {
		return source
	}
	taken := make([]bool, len(olds))
	// projection[j] is stored element j reduced to what elem models, encoded plainly;
	// computed only where the raw bytes match nothing.
	projection := make([][]byte, len(olds))
	project := func(j int) []byte {
		if projection[j] == nil {
			p := reflect.New(elem)
			var b bytes.Buffer
			if json.Unmarshal(olds[j], p.Interface()) == nil && overlayValue(&b, nil, p.Elem()) == nil {
				projection[j] = b.Bytes()
			} else {
				projection[j] = []byte{}
			}
		}
		return projection[j]
	}
	byRaw := make(map[string][]int, len(olds))
	for j, o := range olds {
		byRaw[string(o)] = append(byRaw[string(o)], j)
	}
	take := func(i, j int) { source[i], taken[j] = j, true }
	for i, p := range plain {
		if i < len(olds) && bytes.Equal(olds[i], p) {
			take(i, i)
		}
	}
	for i, p := range plain {
		if source[i] >= 0 {
			continue
		}
		for _, j := range byRaw[string(p)] {
			if !taken[j] {
				take(i, j)
				break
			}
		}
	}
	for i, p := range plain {
		if source[i] >= 0 {
			continue
		}
		if i < len(olds) && !taken[i] && bytes.Equal(project(i), p) {
			take(i, i)
			continue
		}
		for j := range olds {
			if !taken[j] && bytes.Equal(project(j), p) {
				take(i, j)
				break
			}
		}
	}
	for i := range plain {
		if source[i] < 0 && i < len(olds) && !taken[i] {
			take(i, i)
		}
	}
	return source
}

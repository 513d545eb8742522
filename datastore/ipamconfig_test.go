package datastore_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tabby-net/tabby/datastore"
	"github.com/tabby-net/tabby/datastore/etcdtest"
)

// The IPAM config key reads as Calico's IPAM reads it: no document is the defaults (no
// block limit), a stored document field by field (a field left out is false or 0).
func TestDecodeIPAMConfigAsCalico(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want datastore.IPAMConfig
	}{
		{"", datastore.IPAMConfig{StrictAffinity: false, AutoAllocateBlocks: true, MaxBlocksPerHost: 0}},
		{`{"auto_allocate_blocks":true}`, datastore.IPAMConfig{AutoAllocateBlocks: true}},
		{`{"strict_affinity":true}`, datastore.IPAMConfig{StrictAffinity: true}},
		{`{"strict_affinity":false,"auto_allocate_blocks":true,"maxBlocksPerHost":0}`, datastore.IPAMConfig{AutoAllocateBlocks: true}},
		{`{"strict_affinity":true,"auto_allocate_blocks":false,"maxBlocksPerHost":3}`, datastore.IPAMConfig{StrictAffinity: true, MaxBlocksPerHost: 3}},
	} {
		got, err := datastore.DecodeIPAMConfig([]byte(tc.doc))
		if err != nil || got != tc.want {
			t.Errorf("DecodeIPAMConfig(%q) = %+v, %v; want %+v", tc.doc, got, err, tc.want)
		}
	}
	for _, bad := range []string{`{"strict_affinity":"yes"}`, `{"maxBlocksPerHost":-1}`} {
		if _, err := datastore.DecodeIPAMConfig([]byte(bad)); err == nil {
			t.Errorf("DecodeIPAMConfig(%s) was accepted", bad)
		}
	}
	if cfg := datastore.DefaultIPAMConfig(); cfg.BlockLimitReached(1000) {
		t.Error("the default configuration limits blocks per host")
	}
	if cfg := (datastore.IPAMConfig{MaxBlocksPerHost: 2}); !cfg.BlockLimitReached(2) || cfg.BlockLimitReached(1) {
		t.Error("maxBlocksPerHost 2 is not a limit of 2")
	}
}

// The IPAMConfiguration kind reads and writes Calico's config key in Calico's form, and a
// write keeps the fields of the stored document it does not model.
func TestIPAMConfigurationKeepsUnknownFields(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	ctx := context.Background()
	key := e.Client.Keys.IPAMConfig()

	// Nothing stored: the defaults, and the first write is exactly what Calico writes.
	got, err := e.Client.GetResource(ctx, datastore.KindIPAMConfiguration, "default")
	if err != nil {
		t.Fatal(err)
	}
	if s := got.(*datastore.IPAMConfiguration).Spec; s.StrictAffinity || s.MaxBlocksPerHost != 0 || s.AutoAllocateBlocks == nil || !*s.AutoAllocateBlocks {
		t.Fatalf("defaults: %+v", s)
	}
	r, err := datastore.DecodeManifest([]byte("apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {strictAffinity: false}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.ApplyResource(ctx, r); err != nil {
		t.Fatal(err)
	}
	value, _ := getRaw(t, e, key)
	sameJSON(t, "first write", value, []byte(`{"auto_allocate_blocks":true}`))

	putRaw(t, e, key, []byte(`{"strict_affinity":false,"auto_allocate_blocks":true,"maxBlocksPerHost":0,"futureKnob":{"x":[1,2]}}`))
	if _, err := e.Client.PatchResource(ctx, datastore.KindIPAMConfiguration, "default", []byte(`{"spec":{"strictAffinity":true,"maxBlocksPerHost":21}}`)); err != nil {
		t.Fatal(err)
	}
	value, _ = getRaw(t, e, key)
	sameJSON(t, "after patch", value, []byte(`{"strict_affinity":true,"auto_allocate_blocks":true,"maxBlocksPerHost":21,"futureKnob":{"x":[1,2]}}`))

	// Calico's own rule: a block limit needs strict affinity. Nothing is written.
	_, err = e.Client.PatchResource(ctx, datastore.KindIPAMConfiguration, "default", []byte(`{"spec":{"strictAffinity":false}}`))
	if !errors.Is(err, datastore.ErrInvalid) || !strings.Contains(err.Error(), "spec.maxBlocksPerHost") {
		t.Fatalf("strictAffinity false with a limit: %v, want an error naming spec.maxBlocksPerHost", err)
	}
	after, _ := getRaw(t, e, key)
	sameJSON(t, "after a refused patch", after, value)

	if _, err := e.Client.GetResource(ctx, datastore.KindIPAMConfiguration, "other"); err == nil || !strings.Contains(err.Error(), "metadata.name") {
		t.Fatalf("IPAMConfiguration other: %v, want an error naming metadata.name", err)
	}
}

package ipam

import (
	"testing"

	"github.com/tabby-net/tabby/datastore"
)

func TestDecodeIPAMConfigDefaults(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want datastore.IPAMConfig
	}{
		{"", datastore.IPAMConfig{StrictAffinity: false, AutoAllocateBlocks: true, MaxBlocksPerHost: 20}},
		{`{"strict_affinity":true}`, datastore.IPAMConfig{StrictAffinity: true, AutoAllocateBlocks: true, MaxBlocksPerHost: 20}},
		{`{"strict_affinity":false,"auto_allocate_blocks":true,"maxBlocksPerHost":0}`, datastore.IPAMConfig{AutoAllocateBlocks: true, MaxBlocksPerHost: 20}},
		{`{"strict_affinity":true,"auto_allocate_blocks":false,"maxBlocksPerHost":3}`, datastore.IPAMConfig{StrictAffinity: true, MaxBlocksPerHost: 3}},
	} {
		got, err := decodeIPAMConfig([]byte(tc.doc))
		if err != nil || got != tc.want {
			t.Errorf("decodeIPAMConfig(%q) = %+v, %v; want %+v", tc.doc, got, err, tc.want)
		}
	}
	if _, err := decodeIPAMConfig([]byte(`{"strict_affinity":"yes"}`)); err == nil {
		t.Error("a string strict_affinity was accepted")
	}
}

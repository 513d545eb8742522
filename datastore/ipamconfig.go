package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
)

// The IPAMConfiguration kind is a view of the IPAM config key (<root>/ipam/v2/config),
// which holds Calico's internal form (IPAMConfig): calicoctl's `ipam configure` and
// `ipam show --show-configuration` read and write that key in etcd mode, so tabby keeps
// the configuration there too rather than under /resources. Its only name is "default";
// it has no uid or creationTimestamp of its own, and its resourceVersion is the key's
// ModRevision.

// ipamConfiguration renders the stored configuration as the resource (modRevision 0: none
// is stored, the defaults are in force).
func ipamConfiguration(cfg IPAMConfig, modRevision int64) *IPAMConfiguration {
	r := NewIPAMConfiguration(IPAMConfigurationName)
	auto := cfg.AutoAllocateBlocks
	r.Spec = IPAMConfigurationSpec{StrictAffinity: cfg.StrictAffinity, MaxBlocksPerHost: int32(cfg.MaxBlocksPerHost), AutoAllocateBlocks: &auto}
	if modRevision != 0 {
		r.Metadata.ResourceVersion = strconv.FormatInt(modRevision, 10)
	}
	return r
}

// GetIPAMConfiguration reads the IPAM configuration; when none is stored it is the
// defaults (as Calico's IPAM reads it), without a resourceVersion.
func (c *Client) GetIPAMConfiguration(ctx context.Context) (*IPAMConfiguration, error) {
	kv, err := c.Get(ctx, c.Keys.IPAMConfig())
	switch {
	case errors.Is(err, ErrNotFound):
		return ipamConfiguration(DefaultIPAMConfig(), 0), nil
	case err != nil:
		return nil, err
	}
	cfg, err := DecodeIPAMConfig(kv.Value)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kv.Key, err)
	}
	return ipamConfiguration(cfg, kv.ModRevision), nil
}

// ModifyIPAMConfiguration changes the IPAM configuration with compare-and-swap on its key:
// change sees the configuration in force (the defaults when none is stored) and edits it;
// the result is validated as Calico's IPAM validates it and written in Calico's form over
// the stored document, whose other fields survive (SPEC §2a). wantRV, when not "", is the
// resourceVersion the change is based on: a configuration changed since is an error
// wrapping ErrConflict.
func (c *Client) ModifyIPAMConfiguration(ctx context.Context, wantRV string, change func(*IPAMConfigurationSpec) error) (*IPAMConfiguration, error) {
	key := c.Keys.IPAMConfig()
	if err := checkRV(KindIPAMConfiguration, IPAMConfigurationName, wantRV); err != nil {
		return nil, err
	}
	var cfg IPAMConfig
	kv, err := c.Modify(ctx, key, DefaultRetry, func(cur KV) (Edit, error) {
		if wantRV != "" && wantRV != strconv.FormatInt(cur.ModRevision, 10) {
			return Edit{}, staleError(KindIPAMConfiguration, IPAMConfigurationName, key, wantRV, cur.ModRevision)
		}
		var err error
		if cfg, err = DecodeIPAMConfig(cur.Value); err != nil {
			return Edit{}, fmt.Errorf("%s: %w", key, err)
		}
		r := ipamConfiguration(cfg, 0)
		if err := change(&r.Spec); err != nil {
			return Edit{}, err
		}
		if err := Validate(r); err != nil {
			return Edit{}, err
		}
		s := r.Spec
		cfg = IPAMConfig{StrictAffinity: s.StrictAffinity, MaxBlocksPerHost: int(s.MaxBlocksPerHost), AutoAllocateBlocks: s.AutoAllocateBlocks == nil || *s.AutoAllocateBlocks}
		value, err := Overlay(cur.Value, &cfg)
		if err != nil {
			return Edit{}, fmt.Errorf("encode %s: %w", key, err)
		}
		if cur.ModRevision != 0 && string(value) == string(cur.Value) {
			return Edit{}, nil
		}
		return Edit{Value: value}, nil
	})
	if err != nil {
		return nil, err
	}
	return ipamConfiguration(cfg, kv.ModRevision), nil
}

// putIPAMConfiguration writes r as the IPAM configuration (create, update and apply of
// the kind): its spec replaces the one in force. create refuses when one is stored.
func (c *Client) putIPAMConfiguration(ctx context.Context, r *IPAMConfiguration, create bool) (Resource, error) {
	if err := Validate(r); err != nil {
		return nil, err
	}
	if create {
		if _, err := c.Get(ctx, c.Keys.IPAMConfig()); err == nil {
			return nil, fmt.Errorf("%s %q: %w", KindIPAMConfiguration, IPAMConfigurationName, &KeyError{Key: c.Keys.IPAMConfig(), Err: ErrAlreadyExists})
		} else if !errors.Is(err, ErrNotFound) {
			return nil, err
		}
	}
	return c.ModifyIPAMConfiguration(ctx, r.Metadata.ResourceVersion, func(s *IPAMConfigurationSpec) error {
		inForce := s.AutoAllocateBlocks
		*s = r.Spec
		if s.AutoAllocateBlocks == nil {
			// Left out: keep what is in force; Calico's resource has no such field.
			s.AutoAllocateBlocks = inForce
		}
		return nil
	})
}

// checkIPAMConfigurationName refuses any name but "default".
func checkIPAMConfigurationName(name string) error {
	if name == IPAMConfigurationName {
		return nil
	}
	return &FieldError{Kind: KindIPAMConfiguration, Name: name, Field: "metadata.name",
		Problem: fmt.Sprintf("%q: the IPAM configuration is called %q", name, IPAMConfigurationName)}
}

func (c *Client) getIPAMConfigurationNamed(ctx context.Context, name string) (Resource, error) {
	if err := checkIPAMConfigurationName(name); err != nil {
		return nil, err
	}
	return c.GetIPAMConfiguration(ctx)
}

// listIPAMConfigurations lists the one configuration in force, stored or not.
func (c *Client) listIPAMConfigurations(ctx context.Context) (ResourceList, error) {
	kvs, rev, err := c.List(ctx, c.Keys.IPAMConfig())
	if err != nil {
		return ResourceList{}, err
	}
	out := ResourceList{Revision: rev}
	for _, kv := range kvs {
		if kv.Key != c.Keys.IPAMConfig() {
			continue // the list is by prefix: /config… keys of someone else
		}
		cfg, err := DecodeIPAMConfig(kv.Value)
		if err != nil {
			out.Problems = append(out.Problems, Problem{Key: kv.Key, ModRevision: kv.ModRevision, Err: err.Error()})
			return out, nil
		}
		out.Items = []Resource{ipamConfiguration(cfg, kv.ModRevision)}
		return out, nil
	}
	out.Items = []Resource{ipamConfiguration(DefaultIPAMConfig(), 0)}
	return out, nil
}

// deleteIPAMConfiguration removes the stored configuration: the defaults are in force
// again. It returns the configuration as it was.
func (c *Client) deleteIPAMConfiguration(ctx context.Context, name, resourceVersion string) (Resource, error) {
	if err := checkIPAMConfigurationName(name); err != nil {
		return nil, err
	}
	key := c.Keys.IPAMConfig()
	var gone KV
	_, err := c.Modify(ctx, key, DefaultRetry, func(cur KV) (Edit, error) {
		if cur.ModRevision == 0 {
			return Edit{}, notFound(KindIPAMConfiguration, name, &KeyError{Key: key, Err: ErrNotFound})
		}
		if resourceVersion != "" && resourceVersion != strconv.FormatInt(cur.ModRevision, 10) {
			return Edit{}, staleError(KindIPAMConfiguration, name, key, resourceVersion, cur.ModRevision)
		}
		gone = cur
		return Edit{Delete: true}, nil
	})
	if err != nil {
		return nil, err
	}
	cfg, err := DecodeIPAMConfig(gone.Value)
	if err != nil {
		cfg = DefaultIPAMConfig()
	}
	return ipamConfiguration(cfg, gone.ModRevision), nil
}

// patchIPAMConfiguration merges a JSON merge patch into the configuration in force.
func (c *Client) patchIPAMConfiguration(ctx context.Context, name string, patch []byte) (Resource, error) {
	if err := checkIPAMConfigurationName(name); err != nil {
		return nil, err
	}
	pm, err := decodePatch(KindIPAMConfiguration, name, patch, reflect.TypeFor[IPAMConfiguration](), `{"spec":{"strictAffinity":true}}`)
	if err != nil {
		return nil, err
	}
	fail := func(field, format string, args ...any) error {
		return &FieldError{Kind: KindIPAMConfiguration, Name: name, Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	specPatch, _ := pm["spec"].(map[string]any)
	return c.ModifyIPAMConfiguration(ctx, "", func(s *IPAMConfigurationSpec) error {
		doc, err := toGeneric(s)
		if err != nil {
			return err
		}
		merged, err := json.Marshal(MergePatch(doc, specPatch))
		if err != nil {
			return err
		}
		var next IPAMConfigurationSpec
		if err := json.Unmarshal(merged, &next); err != nil {
			return fail("spec", "%v", err)
		}
		*s = next
		return nil
	})
}

// toGeneric decodes v's JSON encoding into a generic value.
func toGeneric(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out any
	return out, json.Unmarshal(b, &out)
}

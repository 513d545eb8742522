package datastore

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	jsonv1 "github.com/go-json-experiment/json/v1"
)

// syncState is the syncer's cache: what it has seen of the key root and the snapshot that
// reflects it. It has no I/O, so that the rules of what is accepted are tested without etcd.
// It is owned by the syncer's goroutine.
type syncState struct {
	keys Keys
	log  *slog.Logger

	// snap is the last snapshot built. Published snapshots are never modified: apply
	// copies the maps it changes.
	snap *Snapshot
	// revs holds the ModRevision of the version of every tracked key last processed, so
	// that a re-list only decodes what changed and knows what was deleted.
	revs map[string]int64
	// pools tracks every pool key, because which pools are in force depends on all of them.
	pools map[string]*poolEntry
	// problems are the refused documents, by key.
	problems map[string]Problem
	// invalid counts the document versions refused since start.
	invalid uint64
	// storedOnly are the accepted resources that set fields tabby does not act on, by key.
	storedOnly map[string]StoredOnlyNotice
	// handleMaps shares equal IPAMHandle.Block maps between handles (most hold one
	// address of one block): with tens of thousands of workloads the maps, not the data,
	// would dominate the cache. Cleared when it outgrows the blocks it can refer to.
	handleMaps map[string]map[string]int
	// allocations and unallocated share equal per-address arrays between blocks, by
	// content (see shareBlockArrays). Cleared like handleMaps.
	allocations map[string][]*int
	unallocated map[string][]int
}

// poolEntry is what the syncer knows of one pool key.
type poolEntry struct {
	key       string
	createRev int64
	// candidate is the newest version that passed the rules that need no other pool.
	candidate *IPPool
	// accepted is the version in force, nil when none (it lost an overlap).
	accepted *IPPool
	// problem is the newest version's own problem, nil when it became the candidate.
	problem *Problem
	// overlapReported is the revision of the candidate last reported as overlapping.
	overlapReported int64
}

// rawKV is one change under the root: a put or a delete. prepare decodes it, so that the
// raw value need not be kept while a long list is read.
type rawKV struct {
	key       string
	value     []byte
	modRev    int64
	createRev int64
	deleted   bool

	prepared bool
	info     KeyInfo
	parseErr error // the key is inside the layout but does not parse
	obj      any   // the decoded document (puts of changed versions)
	err      error // why the document is refused
}

func newSyncState(keys Keys, log *slog.Logger) *syncState {
	return &syncState{
		keys:     keys,
		log:      log,
		snap:     NewSnapshot(),
		revs:     map[string]int64{},
		pools:    map[string]*poolEntry{},
		problems: map[string]Problem{},

		storedOnly:  map[string]StoredOnlyNotice{},
		handleMaps:  map[string]map[string]int{},
		allocations: map[string][]*int{},
		unallocated: map[string][]int{},
	}
}

// relist merges a full list taken at rev: changed keys are applied, keys no longer
// listed are deleted, unchanged keys are not decoded again (and keep the version in force,
// valid or not).
func (st *syncState) relist(kvs []rawKV, rev int64) (*Snapshot, bool) {
	// kvs is the caller's to give away: the deletions are appended to it rather than to a
	// copy, and the first list, which can delete nothing, needs no index of the listed
	// keys. At 20,000 keys each copy or index is megabytes held at the peak of memory use.
	changes := kvs
	if len(st.revs) > 0 {
		listed := make(map[string]bool, len(kvs))
		for _, kv := range kvs {
			listed[kv.key] = true
		}
		for _, key := range slices.Sorted(maps.Keys(st.revs)) {
			if !listed[key] {
				changes = append(changes, rawKV{key: key, modRev: rev, deleted: true})
			}
		}
	}
	return st.apply(changes, rev)
}

// snapBuilder makes the next snapshot from the current one, copying each map the first
// time it changes, and lists the keys it changes.
type snapBuilder struct {
	next    *Snapshot
	copied  map[string]bool
	changes Changes
}

func (b *snapBuilder) copyOnce(name string, copyMap func()) {
	if !b.copied[name] {
		copyMap()
		b.copied[name] = true
	}
}

func (b *snapBuilder) nodes() map[string]*Node {
	b.copyOnce("nodes", func() { b.next.Nodes = maps.Clone(b.next.Nodes) })
	return b.next.Nodes
}

func (b *snapBuilder) peers() map[string]*BGPPeer {
	b.copyOnce("peers", func() { b.next.BGPPeers = maps.Clone(b.next.BGPPeers) })
	return b.next.BGPPeers
}

func (b *snapBuilder) configs() map[string]*BGPConfiguration {
	b.copyOnce("configs", func() { b.next.BGPConfigs = maps.Clone(b.next.BGPConfigs) })
	return b.next.BGPConfigs
}

func (b *snapBuilder) blocks() map[netip.Prefix]*AllocationBlock {
	b.copyOnce("blocks", func() { b.next.Blocks = maps.Clone(b.next.Blocks) })
	return b.next.Blocks
}

func (b *snapBuilder) affinities() map[AffinityKey]BlockAffinity {
	b.copyOnce("affinities", func() { b.next.Affinities = maps.Clone(b.next.Affinities) })
	return b.next.Affinities
}

func (b *snapBuilder) handles() map[string]*IPAMHandle {
	b.copyOnce("handles", func() { b.next.Handles = maps.Clone(b.next.Handles) })
	return b.next.Handles
}

// apply applies changes in order and returns the resulting snapshot at revision rev, and
// whether anything in it changed. Unchanged, it returns the current snapshot.
func (st *syncState) apply(changes []rawKV, rev int64) (*Snapshot, bool) {
	next := *st.snap
	b := &snapBuilder{next: &next, copied: map[string]bool{}}
	changed, poolsChanged, problemsChanged, storedOnlyChanged := false, false, false, false
	for _, kv := range changes {
		st.prepare(&kv)
		if kv.parseErr == nil && kv.info.Type == KeyUnknown {
			continue // not ours: Calico keeps much more under /calico
		}
		if kv.deleted {
			if _, tracked := st.revs[kv.key]; !tracked {
				continue
			}
			delete(st.revs, kv.key)
		} else {
			if st.revs[kv.key] == kv.modRev {
				continue // a version already processed (re-list)
			}
			st.revs[kv.key] = kv.modRev
		}
		changed = true
		storedOnlyChanged = st.noteStoredOnly(kv) || storedOnlyChanged
		if kv.parseErr != nil {
			problemsChanged = st.setProblem(kv, kv.parseErr) || problemsChanged
			continue
		}
		if kv.info.Type == KeyResource && kv.info.Kind == KindIPPool {
			st.applyPool(kv)
			poolsChanged = true
			continue
		}
		st.applyOther(b, kv)
		problemsChanged = st.setProblem(kv, kv.err) || problemsChanged
	}
	if poolsChanged {
		b.next.Pools = st.resolvePools()
		problemsChanged = true
	}
	if !changed {
		return st.snap, false
	}
	if problemsChanged {
		b.next.Problems = st.problemList()
	}
	if storedOnlyChanged {
		b.next.StoredOnly = make([]StoredOnlyNotice, 0, len(st.storedOnly))
		for _, key := range slices.Sorted(maps.Keys(st.storedOnly)) {
			b.next.StoredOnly = append(b.next.StoredOnly, st.storedOnly[key])
		}
	}
	b.next.changes = b.changesFrom(st.snap)
	b.next.Revision = rev
	st.snap = b.next
	return st.snap, true
}

// changesFrom links the keys this builder changed to the chain of prev. It returns nil
// when prev is the empty snapshot the syncer starts from (the first list changes
// everything: no subscriber has anything to update) or when there are more keys than a
// chain holds (a re-list after a long outage, say): subscribers then compare the maps.
func (b *snapBuilder) changesFrom(prev *Snapshot) *Changes {
	c := b.changes
	c.From = prev.Revision
	c.keys = c.size()
	if prev.Revision == 0 || c.keys > changeChainKeys {
		return nil
	}
	if p := prev.changes; p != nil && p.keys+c.keys <= changeChainKeys {
		c.prev, c.keys = p, p.keys+c.keys
	}
	return &c
}

// noteStoredOnly records which fields of an accepted resource tabby does not act on
// (SPEC §2a), and forgets them when the resource goes or is refused. It reports whether
// the list changed.
func (st *syncState) noteStoredOnly(kv rawKV) bool {
	_, had := st.storedOnly[kv.key]
	r, ok := kv.obj.(Resource)
	if kv.deleted || kv.parseErr != nil || kv.err != nil || !ok {
		delete(st.storedOnly, kv.key)
		return had
	}
	fields := StoredOnly(r)
	if len(fields) == 0 {
		delete(st.storedOnly, kv.key)
		return had
	}
	st.storedOnly[kv.key] = StoredOnlyNotice{Key: kv.key, ModRevision: kv.modRev, Fields: joinStoredOnly(fields)}
	return true
}

// setProblem records (err != nil) or clears the problem of a key, reporting whether the
// problem list changed. A put that is refused is counted and logged once per version.
func (st *syncState) setProblem(kv rawKV, err error) bool {
	if err == nil || kv.deleted {
		if _, had := st.problems[kv.key]; had {
			delete(st.problems, kv.key)
			return true
		}
		return false
	}
	st.refused(kv, err)
	st.problems[kv.key] = Problem{Key: kv.key, ModRevision: kv.modRev, Err: err.Error()}
	return true
}

func (st *syncState) refused(kv rawKV, err error) {
	st.invalid++
	st.log.Warn("refusing an invalid document in etcd; the last valid version stays in force",
		"key", kv.key, "revision", kv.modRev, "error", err)
}

// prepare parses a change's key and decodes its document (checking the rules that need
// nothing else), then drops the raw value. Versions already processed are not decoded again.
func (st *syncState) prepare(kv *rawKV) {
	if kv.prepared {
		return
	}
	kv.prepared = true
	defer func() { kv.value = nil }()
	kv.info, kv.parseErr = st.keys.Parse(kv.key)
	if kv.parseErr != nil || kv.deleted || kv.info.Type == KeyUnknown || st.revs[kv.key] == kv.modRev {
		return
	}
	info := kv.info
	switch info.Type {
	case KeyResource:
		r, err := DecodeStored(info.Kind, info.Name, kv.value, kv.modRev)
		if err == nil {
			err = validateDefaulted(r) // DecodeStored applied the defaults; r is ours
		}
		kv.obj, kv.err = r, err
	case KeyBlock:
		blk, err := decodeBlock(kv.value, info.CIDR)
		if err == nil {
			st.shareBlockArrays(blk, len(st.snap.Blocks))
		}
		kv.obj, kv.err = blk, err
	case KeyAffinity:
		kv.obj, kv.err = decodeAffinity(kv.value)
	case KeyHandle:
		var h IPAMHandle
		if err := json.Unmarshal(kv.value, &h); err != nil {
			kv.err = fmt.Errorf("IPAM handle %s: %w", info.Name, err)
			return
		}
		h.Block = st.shareHandleMap(h.Block, len(st.snap.Blocks))
		kv.obj = &h
	case KeyIPAMConfig:
		cfg, err := DecodeIPAMConfig(kv.value)
		if err != nil {
			kv.err = err
			return
		}
		kv.obj = cfg
	}
}

// applyOther applies a prepared change to anything but a pool. A refused document
// (kv.err) leaves the previous version in force.
func (st *syncState) applyOther(b *snapBuilder, kv rawKV) {
	info := kv.info
	if kv.err != nil && !kv.deleted {
		return
	}
	c := &b.changes
	switch info.Type {
	case KeyResource:
		switch info.Kind {
		case KindNode:
			c.Nodes = append(c.Nodes, info.Name)
			setOrDelete(b.nodes(), info.Name, kv)
		case KindBGPPeer:
			c.BGPPeers = append(c.BGPPeers, info.Name)
			setOrDelete(b.peers(), info.Name, kv)
		case KindBGPConfiguration:
			c.BGPConfigs = append(c.BGPConfigs, info.Name)
			setOrDelete(b.configs(), info.Name, kv)
		}
	case KeyBlock:
		c.Blocks = append(c.Blocks, info.CIDR)
		setOrDelete(b.blocks(), info.CIDR, kv)
	case KeyAffinity:
		key := AffinityKey{Host: info.Host, CIDR: info.CIDR}
		c.Affinities = append(c.Affinities, key)
		setOrDelete(b.affinities(), key, kv)
	case KeyHandle:
		c.Handles = append(c.Handles, info.Name)
		setOrDelete(b.handles(), info.Name, kv)
	case KeyIPAMConfig:
		if kv.deleted {
			b.next.IPAMConfig = DefaultIPAMConfig()
		} else {
			b.next.IPAMConfig = kv.obj.(IPAMConfig)
		}
	}
}

// setOrDelete applies a put (with its decoded document) or a delete to one map.
func setOrDelete[K comparable, V any](m map[K]V, key K, kv rawKV) {
	if kv.deleted {
		delete(m, key)
	} else {
		m[key] = kv.obj.(V)
	}
}

// blockJSON are the options of decodeBlock's JSON decoder: encoding/json's leniency
// (names in any case, the last of duplicate names wins, invalid UTF-8 kept), so that a
// block reads the same as everywhere else in tabby. The decoder is JSON v2
// (go-json-experiment, what becomes encoding/json/v2): blocks are most of what a host
// joining a large cluster decodes, and it reads them in half the time of encoding/json.
var blockJSON = jsonv2.JoinOptions(
	jsonv2.MatchCaseInsensitiveNames(true),
	jsonv1.MatchCaseSensitiveDelimiter(true), // "handleid" is not "handle_id"
	jsontext.AllowDuplicateNames(true),
	jsontext.AllowInvalidUTF8(true),
)

// decodeBlock decodes and checks a block enough that code indexing into it cannot go out
// of range.
func decodeBlock(value []byte, cidr netip.Prefix) (*AllocationBlock, error) {
	var b AllocationBlock
	if cidr.Addr().Is4() && cidr.Bits() >= 20 {
		// encoding/json appends into a slice's existing capacity: sized up front, the two
		// per-address arrays are allocated once instead of growing by doubling.
		size := 1 << (32 - cidr.Bits())
		b.Allocations = make([]*int, 0, size)
		b.Unallocated = make([]int, 0, size)
	}
	if err := jsonv2.Unmarshal(value, &b, blockJSON); err != nil {
		return nil, fmt.Errorf("block %s: %w", cidr, err)
	}
	p, err := netip.ParsePrefix(b.CIDR)
	if err != nil || p != cidr {
		return nil, fmt.Errorf("block %s: cidr %q does not match its key", cidr, b.CIDR)
	}
	if !cidr.Addr().Is4() || cidr.Bits() < 20 {
		return nil, fmt.Errorf("block %s: not an IPv4 block of /20 to /32", cidr)
	}
	size := 1 << (32 - cidr.Bits())
	if len(b.Allocations) != size {
		return nil, fmt.Errorf("block %s: %d allocations, want %d", cidr, len(b.Allocations), size)
	}
	for i, a := range b.Allocations {
		if a != nil && (*a < 0 || *a >= len(b.Attributes)) {
			return nil, fmt.Errorf("block %s: allocation %d points at attribute %d of %d", cidr, i, *a, len(b.Attributes))
		}
	}
	for _, o := range b.Unallocated {
		if o < 0 || o >= size {
			return nil, fmt.Errorf("block %s: unallocated ordinal %d is outside the block", cidr, o)
		}
	}
	shareSecondaries(&b)
	return &b, nil
}

// shareBlockArrays makes a block's Allocations and Unallocated the same slices as an
// earlier block's with equal content. They are a block's bulk (two entries per address,
// 1 KB for a /26) and blocks that hold the same ordinals, the common case of blocks
// filled in FIFO order from ordinal 0, have equal ones; snapshots are read-only, so they
// can share. Shared slices are clipped (len == cap): an append by anyone copies.
func (st *syncState) shareBlockArrays(b *AllocationBlock, blocks int) {
	if len(st.allocations) > 2*blocks+1024 {
		clear(st.allocations)
		clear(st.unallocated)
	}
	key := make([]byte, 0, 2*len(b.Allocations))
	if b.Allocations != nil {
		for _, a := range b.Allocations {
			v := int64(-1)
			if a != nil {
				v = int64(*a)
			}
			key = binary.AppendVarint(key, v)
		}
		if shared, ok := st.allocations[string(key)]; ok {
			b.Allocations = shared
		} else {
			b.Allocations = slices.Clip(b.Allocations)
			st.allocations[string(key)] = b.Allocations
		}
	}
	if b.Unallocated != nil {
		key = key[:0]
		for _, o := range b.Unallocated {
			key = binary.AppendUvarint(key, uint64(o))
		}
		if shared, ok := st.unallocated[string(key)]; ok {
			b.Unallocated = shared
		} else {
			b.Unallocated = slices.Clip(b.Unallocated)
			st.unallocated[string(key)] = b.Unallocated
		}
	}
}

// shareSecondaries makes the attributes of a block that have equal secondary attributes
// (typically {"node": <the block's host>}) share one map: snapshots are read-only, and one
// map per address would dominate the memory of a large cluster's cache.
func shareSecondaries(b *AllocationBlock) {
	seen := map[string]map[string]string{}
	for i := range b.Attributes {
		sec := b.Attributes[i].Secondary
		if sec == nil {
			continue
		}
		k := mapKey(sec)
		if m, ok := seen[k]; ok {
			b.Attributes[i].Secondary = m
		} else {
			seen[k] = sec
		}
	}
}

// shareHandleMap returns a map equal to m that other handles may share.
func (st *syncState) shareHandleMap(m map[string]int, blocks int) map[string]int {
	if m == nil {
		return nil
	}
	if len(st.handleMaps) > 2*blocks+1024 {
		clear(st.handleMaps)
	}
	parts := make(map[string]string, len(m))
	for k, v := range m {
		parts[k] = strconv.Itoa(v)
	}
	k := mapKey(parts)
	if shared, ok := st.handleMaps[k]; ok {
		return shared
	}
	st.handleMaps[k] = m
	return m
}

// mapKey renders a map's content as a string, the same for equal maps.
func mapKey(m map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(m[k])
		b.WriteByte(0)
	}
	return b.String()
}

func decodeAffinity(value []byte) (BlockAffinity, error) {
	var a BlockAffinity
	if len(value) == 0 {
		return a, nil // older Calico versions stored an empty value: confirmed
	}
	if err := json.Unmarshal(value, &a); err != nil {
		return a, fmt.Errorf("block affinity: %w", err)
	}
	switch a.State {
	case "", AffinityConfirmed, AffinityPending, AffinityPendingDeletion:
		return a, nil
	}
	return a, fmt.Errorf("block affinity: unknown state %q", a.State)
}

// applyPool records a prepared change to one pool key. Which pools are in force is decided
// by resolvePools once the whole batch is applied.
func (st *syncState) applyPool(kv rawKV) {
	name := kv.info.Name
	if kv.deleted {
		delete(st.pools, name)
		delete(st.problems, kv.key)
		return
	}
	e := st.pools[name]
	if e == nil || e.createRev != kv.createRev {
		// A new pool, or one deleted and created again while we were not watching.
		e = &poolEntry{key: kv.key, createRev: kv.createRev}
		st.pools[name] = e
	}
	err := kv.err
	if err == nil && e.accepted != nil {
		err = validatePoolChange(e.accepted, kv.obj.(*IPPool))
	}
	if err != nil {
		st.refused(kv, err)
		e.problem = &Problem{Key: kv.key, ModRevision: kv.modRev, Err: err.Error()}
		return
	}
	e.candidate = kv.obj.(*IPPool)
	e.problem = nil
}

// resolvePools decides which pools are in force: every candidate, oldest first, unless it
// overlaps one already in force. So a pool written with etcdctl over an existing one is
// refused, and the decision is the same for every syncer, whenever it started.
func (st *syncState) resolvePools() map[string]*IPPool {
	entries := make([]*poolEntry, 0, len(st.pools))
	for _, e := range st.pools {
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b *poolEntry) int {
		return cmp.Or(cmp.Compare(a.createRev, b.createRev), cmp.Compare(a.key, b.key))
	})
	inForce := map[string]*IPPool{}
	var accepted []*IPPool
	for _, e := range entries {
		delete(st.problems, e.key)
		if e.problem != nil {
			st.problems[e.key] = *e.problem
		}
		if e.candidate == nil {
			continue
		}
		if err := poolOverlap(e.candidate, accepted); err != nil {
			modRev, _ := strconv.ParseInt(e.candidate.Metadata.ResourceVersion, 10, 64)
			if e.problem == nil {
				st.problems[e.key] = Problem{Key: e.key, ModRevision: modRev, Err: err.Error()}
			}
			if e.overlapReported != modRev {
				// Count and log each refused version once, however often pools change.
				st.refused(rawKV{key: e.key, modRev: modRev}, err)
				e.overlapReported = modRev
			}
			e.accepted = nil
			continue
		}
		e.accepted = e.candidate
		accepted = append(accepted, e.candidate)
		inForce[e.candidate.Metadata.Name] = e.candidate
	}
	return inForce
}

func (st *syncState) problemList() []Problem {
	out := make([]Problem, 0, len(st.problems))
	for _, key := range slices.Sorted(maps.Keys(st.problems)) {
		out = append(out, st.problems[key])
	}
	return out
}

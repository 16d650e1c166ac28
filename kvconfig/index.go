package kvconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
)

// Sentinel errors of resolution.
var (
	// ErrNotFound is wrapped when no scope has a config for the server.
	ErrNotFound = errors.New("kvconfig: no config found")
	// ErrNotReady is returned before the index has loaded the initial
	// values of both buckets.
	ErrNotReady = errors.New("kvconfig: index not ready: initial KV values not loaded yet")
)

// Entry is one config key as the index holds it. Entries are immutable once
// stored; a put replaces the pointer.
type Entry struct {
	Key      Key
	KeyName  string // Key.String(), kept to avoid rebuilding it per resolve
	Scope    string // Key.Scope()
	Revision uint64
	// Raw is the compacted JSON value; set only for valid entries.
	Raw json.RawMessage
	// Config is the decoded value; nil when Err is set.
	Config *ServerConfig
	// Err is the *ConfigErrors of a malformed value: every problem (at most
	// MaxProblems listed), each naming key and revision.
	Err error
}

// Valid reports whether the entry decoded and validated.
func (e *Entry) Valid() bool { return e.Err == nil }

type roleEntry struct {
	role      string
	consumers []string // granted "<stream>:<durable>"s; nil: none
	revision  uint64
	err       error
}

// Index is the in-memory view of the config and role buckets. It is fed by
// Apply* calls (normally from a Watcher) and answers Resolve, ResolveAll and
// Explain without I/O. It is safe for concurrent use.
type Index struct {
	mu       sync.RWMutex
	global   map[string]*Entry            // server -> entry
	roles    map[string]map[string]*Entry // role -> server -> entry
	agents   map[string]map[string]*Entry // agent -> server -> entry
	registry map[string]roleEntry         // agent -> role record
	invalid  map[string]*Entry            // key -> malformed entry
	unknown  map[string]uint64            // unrecognised key -> revision

	configsReady, agentsReady bool
	// configsRev and agentsRev are the highest revisions applied per bucket:
	// the index is at least this current.
	configsRev, agentsRev uint64
	// configsEpoch and agentsEpoch name each bucket's incarnation (its
	// stream's creation time); asOf joins them.
	configsEpoch, agentsEpoch string
	// gen counts every change to the index, for answers cached across
	// changes (rolesCache, under cacheMu, which is taken before mu).
	gen        uint64
	cacheMu    sync.Mutex
	rolesCache rolesCache
}

// NewIndex returns an empty index that is not ready.
func NewIndex() *Index {
	return &Index{
		global:   map[string]*Entry{},
		roles:    map[string]map[string]*Entry{},
		agents:   map[string]map[string]*Entry{},
		registry: map[string]roleEntry{},
		invalid:  map[string]*Entry{},
		unknown:  map[string]uint64{},
	}
}

// Op is the kind of a KV change.
type Op int

const (
	// OpPut is a value written.
	OpPut Op = iota + 1
	// OpDelete is a key deleted or purged.
	OpDelete
)

func (o Op) String() string {
	if o == OpPut {
		return "put"
	}
	return "delete"
}

// Change describes one applied KV change.
type Change struct {
	Bucket   string
	KeyName  string
	Revision uint64
	Op       Op
	// Key is the parsed config key (configs bucket, recognised keys only).
	Key Key
	// Err is set when the key is unrecognised or the value malformed.
	Err error
	// OldRole and NewRole are set for the agents bucket.
	OldRole, NewRole string
}

// ApplyConfig applies a change to the configs bucket. Deletes and purges
// remove the key (absent keys never win). A malformed value is stored as an
// invalid entry so that it shadows less specific scopes and resolves to an
// error naming it.
func (ix *Index) ApplyConfig(key string, rev uint64, op Op, value []byte) Change {
	ch := Change{Bucket: BucketConfigs, KeyName: key, Revision: rev, Op: op}
	k, err := ParseKey(key)
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.configsRev = max(ix.configsRev, rev)
	ix.gen++
	if err != nil {
		ch.Err = err
		if op == OpPut {
			ix.unknown[key] = rev
		} else {
			delete(ix.unknown, key)
		}
		return ch
	}
	ch.Key = k
	if op == OpDelete {
		ix.remove(k)
		delete(ix.invalid, key)
		return ch
	}
	e := &Entry{Key: k, KeyName: key, Scope: k.Scope(), Revision: rev}
	if cfg, err := DecodeConfig(value); err != nil {
		var ces *ConfigErrors
		if errors.As(err, &ces) {
			ces.locate(BucketConfigs, key, rev)
		}
		e.Err = err
		ix.invalid[key] = e
	} else {
		var buf bytes.Buffer
		if json.Compact(&buf, value) == nil {
			e.Raw = buf.Bytes()
		}
		e.Config = cfg
		delete(ix.invalid, key)
	}
	ch.Err = e.Err
	ix.store(e)
	return ch
}

func (ix *Index) store(e *Entry) {
	switch e.Key.Kind {
	case ScopeGlobal:
		ix.global[e.Key.Server] = e
	case ScopeRole:
		putNested(ix.roles, e.Key.Owner, e)
	case ScopeAgent:
		putNested(ix.agents, e.Key.Owner, e)
	}
}

func (ix *Index) remove(k Key) {
	switch k.Kind {
	case ScopeGlobal:
		delete(ix.global, k.Server)
	case ScopeRole:
		delNested(ix.roles, k.Owner, k.Server)
	case ScopeAgent:
		delNested(ix.agents, k.Owner, k.Server)
	}
}

func putNested(m map[string]map[string]*Entry, owner string, e *Entry) {
	inner := m[owner]
	if inner == nil {
		inner = map[string]*Entry{}
		m[owner] = inner
	}
	inner[e.Key.Server] = e
}

func delNested(m map[string]map[string]*Entry, owner, server string) {
	if inner := m[owner]; inner != nil {
		delete(inner, server)
		if len(inner) == 0 {
			delete(m, owner)
		}
	}
}

// ApplyAgent applies a change to the role registry (mcp_agents).
func (ix *Index) ApplyAgent(agent string, rev uint64, op Op, value []byte) Change {
	ch := Change{Bucket: BucketAgents, KeyName: agent, Revision: rev, Op: op}
	if err := ValidateID(KindAgent, agent); err != nil {
		ch.Err = fmt.Errorf("%w %q in bucket %s: %w", ErrUnrecognisedKey, Truncate(agent, 80), BucketAgents, err)
		return ch
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.agentsRev = max(ix.agentsRev, rev)
	ix.gen++
	ch.OldRole = ix.registry[agent].role
	if op == OpDelete {
		delete(ix.registry, agent)
		return ch
	}
	rec, err := DecodeAgentRecord(value)
	re := roleEntry{role: rec.Role, consumers: rec.Consumers, revision: rev}
	if err != nil {
		var ces *ConfigErrors
		if errors.As(err, &ces) {
			ces.locate(BucketAgents, agent, rev)
		}
		re = roleEntry{revision: rev, err: err}
		ch.Err = err
	}
	ix.registry[agent] = re
	ch.NewRole = re.role
	return ch
}

// MarkReady records that the initial values of a bucket are loaded.
func (ix *Index) MarkReady(bucket string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.gen++
	switch bucket {
	case BucketConfigs:
		ix.configsReady = true
	case BucketAgents:
		ix.agentsReady = true
	}
}

// Ready reports whether both buckets' initial values are loaded.
func (ix *Index) Ready() bool {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return ix.configsReady && ix.agentsReady
}

// Role returns the agent's role from the registry ("" when it has none).
func (ix *Index) Role(agent string) (string, error) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	re := ix.registry[agent]
	return re.role, re.err
}

// ConsumerGranted reports whether agent's registry record (valid) grants
// durable of stream: the supervisor reads the info of those consumers
// only. An agent with no record, or an invalid one, is granted none.
func (ix *Index) ConsumerGranted(agent, stream, durable string) bool {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	re := ix.registry[agent]
	if re.err != nil {
		return false
	}
	for _, c := range re.consumers {
		if len(c) == len(stream)+1+len(durable) && c[:len(stream)] == stream && c[len(stream)] == ':' && c[len(stream)+1:] == durable {
			return true
		}
	}
	return false
}

// Registered reports whether agent has an entry in the role registry
// (mcp_agents), valid or not: the supervisor's admission test.
func (ix *Index) Registered(agent string) bool {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	_, ok := ix.registry[agent]
	return ok
}

// Invalid returns the malformed config entries, sorted by key.
func (ix *Index) Invalid() []*Entry {
	ix.mu.RLock()
	out := make([]*Entry, 0, len(ix.invalid))
	for _, e := range ix.invalid {
		out = append(out, e)
	}
	ix.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].KeyName < out[j].KeyName })
	return out
}

// Unrecognised returns keys in the config bucket that match no key shape,
// with their revisions.
func (ix *Index) Unrecognised() map[string]uint64 {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	out := make(map[string]uint64, len(ix.unknown))
	for k, v := range ix.unknown {
		out[k] = v
	}
	return out
}

// Len returns the number of config entries held, valid or not.
func (ix *Index) Len() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	n := len(ix.global)
	for _, m := range ix.roles {
		n += len(m)
	}
	for _, m := range ix.agents {
		n += len(m)
	}
	return n
}

// ResetBucket forgets every entry of a bucket and marks it not ready, before
// a full reload.
func (ix *Index) ResetBucket(bucket string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.gen++
	switch bucket {
	case BucketConfigs:
		ix.global = map[string]*Entry{}
		ix.roles = map[string]map[string]*Entry{}
		ix.agents = map[string]map[string]*Entry{}
		ix.invalid = map[string]*Entry{}
		ix.unknown = map[string]uint64{}
		ix.configsReady = false
		ix.configsRev = 0
	case BucketAgents:
		ix.registry = map[string]roleEntry{}
		ix.agentsReady = false
		ix.agentsRev = 0
	}
}

// AsOf returns the index's watermark: the highest revision applied per bucket.
func (ix *Index) AsOf() AsOf {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return ix.asOfLocked()
}

func (ix *Index) asOfLocked() AsOf {
	ep := ""
	if ix.configsEpoch != "" || ix.agentsEpoch != "" {
		ep = ix.configsEpoch + "." + ix.agentsEpoch
	}
	return AsOf{Configs: ix.configsRev, Agents: ix.agentsRev, Epoch: ep}
}

// SetEpoch records the incarnation of bucket (an opaque name, such as its
// stream's creation time) and raises its watermark to lastSeq, the
// bucket's last sequence when its values were loaded: a watermark taken
// from the stream, not from the keys that happen to remain, never goes
// backwards after a compaction and a restart.
func (ix *Index) SetEpoch(bucket, epoch string, lastSeq uint64) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	switch bucket {
	case BucketConfigs:
		ix.configsEpoch, ix.configsRev = epoch, max(ix.configsRev, lastSeq)
	case BucketAgents:
		ix.agentsEpoch, ix.agentsRev = epoch, max(ix.agentsRev, lastSeq)
	}
}

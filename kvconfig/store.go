package kvconfig

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Bucket defaults.
const (
	// DefaultHistory is the number of revisions kept per config key.
	DefaultHistory = 10
	// MinHistory is the least history the contract allows for mcp_configs.
	MinHistory = 5
	// MaxFleetRecordBytes is mcp_fleet's max value size: the supervisor
	// trims a record over it (see fleet) so that a write never fails for
	// size.
	MaxFleetRecordBytes = 64 << 10
)

// BucketConfig says how the buckets are created when missing.
type BucketConfig struct {
	// Replicas for each bucket: 1 on a single server, 3 on a cluster.
	// Default 1.
	Replicas int
	// History kept per config key, at least MinHistory. Default DefaultHistory.
	History int
	// FleetMaxBytes bounds the mcp_fleet bucket on disk; the supervisor
	// sets it to its max agents times MaxFleetRecordBytes. Zero: no bound.
	FleetMaxBytes int64
}

func (c *BucketConfig) defaults() error {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.History == 0 {
		c.History = DefaultHistory
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return fmt.Errorf("kvconfig: BucketConfig.Replicas %d outside 1..5", c.Replicas)
	}
	if c.History < MinHistory || c.History > 64 {
		return fmt.Errorf("kvconfig: BucketConfig.History %d outside %d..64", c.History, MinHistory)
	}
	return nil
}

// Descriptions of the buckets the supervisor creates.
const (
	configsDesc = "Tether MCP server configs: global.<server>, role.<role>.<server>, agent.<agent>.<server>"
	agentsDesc  = "Tether role registry: <agent> -> {\"role\":\"<role>\"}"
)

// Buckets are the three KV buckets of the contract.
type Buckets struct {
	Configs, Agents, Fleet jetstream.KeyValue
}

// EnsureBuckets opens the three buckets, creating any that is missing.
// Existing buckets are used as they are (an operator may have tuned them).
func EnsureBuckets(ctx context.Context, js jetstream.JetStream, cfg BucketConfig) (Buckets, error) {
	if err := cfg.defaults(); err != nil {
		return Buckets{}, err
	}
	open := func(name, desc string, history int) (jetstream.KeyValue, error) {
		kv, err := js.KeyValue(ctx, name)
		if err == nil {
			return kv, nil
		}
		if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("kvconfig: open bucket %s: %w", name, err)
		}
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: name, Description: desc, History: uint8(history), Replicas: cfg.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			return js.KeyValue(ctx, name) // another supervisor won the race
		}
		if err != nil {
			return nil, fmt.Errorf("kvconfig: create bucket %s: %w", name, err)
		}
		return kv, nil
	}
	var b Buckets
	var err error
	if b.Configs, err = open(BucketConfigs, configsDesc, cfg.History); err != nil {
		return b, err
	}
	if b.Agents, err = open(BucketAgents, agentsDesc, cfg.History); err != nil {
		return b, err
	}
	if b.Fleet, err = open(BucketFleet, "Tether fleet status, written by the supervisor", 1); err != nil {
		return b, err
	}
	if err = boundFleet(ctx, js, cfg.FleetMaxBytes); err != nil {
		return b, err
	}
	return b, nil
}

// RecreateFleet creates a deleted mcp_fleet again with cfg's replicas and
// bounds (an existing one is left as it is).
func RecreateFleet(ctx context.Context, js jetstream.JetStream, cfg BucketConfig) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	_, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BucketFleet,
		Description: "Tether fleet status, written by the supervisor", History: 1, Replicas: cfg.Replicas})
	if err != nil && !errors.Is(err, jetstream.ErrBucketExists) {
		return fmt.Errorf("kvconfig: re-create bucket %s: %w", BucketFleet, err)
	}
	return boundFleet(ctx, js, cfg.FleetMaxBytes)
}

// boundFleet gives mcp_fleet (which only the supervisor writes) its max
// value size and max bytes, also when an older version created it
// without: one record per agent, so bounded agents bound the bucket.
func boundFleet(ctx context.Context, js jetstream.JetStream, maxBytes int64) error {
	st, err := js.Stream(ctx, "KV_"+BucketFleet)
	if err != nil {
		return fmt.Errorf("kvconfig: bucket %s: %w", BucketFleet, err)
	}
	sc := st.CachedInfo().Config
	if maxBytes <= 0 {
		maxBytes = -1
	}
	if sc.MaxMsgSize == MaxFleetRecordBytes && sc.MaxBytes == maxBytes {
		return nil
	}
	sc.MaxMsgSize, sc.MaxBytes = MaxFleetRecordBytes, maxBytes
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		return fmt.Errorf("kvconfig: bound bucket %s (max value %d bytes, max %d bytes): %w", BucketFleet, MaxFleetRecordBytes, maxBytes, err)
	}
	return nil
}

// StoreConfig configures a Store.
type StoreConfig struct {
	// JetStream is the context the watchers open on. Required.
	JetStream jetstream.JetStream
	// Buckets are the configs and agents buckets to watch. Required.
	Buckets Buckets
	// OnChange is called after every applied change, from the watcher's
	// goroutine (keep it short). Optional.
	OnChange func(Change)
	// OnRestart is called when a watcher is re-created. Optional.
	OnRestart func(bucket, reason string)
	// CheckInterval is the watchers' stall-check interval. Default DefaultCheckInterval.
	CheckInterval time.Duration
	// Recreate, when set, re-creates a watched bucket that was deleted,
	// with these settings (loudly: every key it held is gone). Nil waits
	// for an operator to re-create it.
	Recreate *BucketConfig
	// OnBucket is told when a bucket is found deleted, is re-created, or
	// is misconfigured ("" clears the latter). Optional (metrics).
	OnBucket func(bucket, problem string)
	Logger   *zerolog.Logger
}

// Store is an Index kept current by watchers on the configs and agents
// buckets.
type Store struct {
	index     *Index
	watchers  []*Watcher
	ready     chan struct{}
	readyOnce sync.Once

	mu       sync.Mutex
	problems map[string]string // bucket -> what is wrong with its settings
}

// OpenStore starts the watchers. The index becomes ready when both
// buckets' initial values are loaded (see WaitReady). Close stops them.
func OpenStore(cfg StoreConfig) (*Store, error) {
	if cfg.JetStream == nil || cfg.Buckets.Configs == nil || cfg.Buckets.Agents == nil {
		return nil, errors.New("kvconfig: StoreConfig needs JetStream and the configs and agents buckets")
	}
	s := &Store{index: NewIndex(), ready: make(chan struct{}), problems: map[string]string{}}
	log := zerolog.Nop()
	if cfg.Logger != nil {
		log = *cfg.Logger
	}
	for _, b := range []struct {
		kv    jetstream.KeyValue
		apply func(string, uint64, Op, []byte) Change
		desc  string
	}{
		{cfg.Buckets.Configs, s.index.ApplyConfig, configsDesc},
		{cfg.Buckets.Agents, s.index.ApplyAgent, agentsDesc},
	} {
		bucket, apply, desc := b.kv.Bucket(), b.apply, b.desc
		loaded, keys := false, 0 // watcher goroutine only: initial values are in; how many
		var epoch string         // watcher goroutine only: the bucket's incarnation
		var lastSeq uint64       // its last sequence at the open that loads it
		var missing func(context.Context) error
		if cfg.Recreate != nil {
			rc := *cfg.Recreate
			missing = func(ctx context.Context) error { return s.recreate(ctx, cfg, rc, bucket, desc, log) }
		}
		ready := func() {
			s.index.MarkReady(bucket)
			if s.index.Ready() {
				// Both buckets' watchers may get here at once, and again
				// after a new bucket epoch: close exactly once.
				s.readyOnce.Do(func() { close(s.ready) })
			}
		}
		w, err := StartWatcher(WatcherConfig{
			Bucket:    bucket,
			JetStream: func() (jetstream.JetStream, error) { return cfg.JetStream, nil },
			Handle: func(e jetstream.KeyValueEntry) {
				if e == nil {
					s.index.SetEpoch(bucket, epoch, lastSeq)
					loaded = true
					log.Info().Str("bucket", bucket).Int("keys", keys).Msg("kv bucket loaded")
					ready()
					return
				}
				op := OpPut
				if e.Operation() != jetstream.KeyValuePut {
					op = OpDelete
				}
				ch := apply(e.Key(), e.Revision(), op, e.Value())
				if !loaded {
					keys++
				}
				logChange(log, ch, loaded)
				if cfg.OnChange != nil {
					cfg.OnChange(ch)
				}
			},
			Reset:   func() { loaded, keys = false, 0; s.index.ResetBucket(bucket) },
			Missing: missing,
			Opened: func(info *jetstream.StreamInfo) {
				epoch, lastSeq = strconv.FormatInt(info.Created.UnixNano(), 36), info.State.LastSeq
				s.checkSettings(cfg, bucket, info.Config, log)
			},
			Restarted: func(reason string) {
				if cfg.OnRestart != nil {
					cfg.OnRestart(bucket, reason)
				}
			},
			CheckInterval: cfg.CheckInterval,
			Logger:        &log,
		})
		if err != nil {
			s.Close()
			return nil, err
		}
		s.watchers = append(s.watchers, w)
	}
	return s, nil
}

// logChange logs one applied change: at info once the bucket is loaded
// (at debug while its initial values stream in, so a start does not log
// every key), and a rejected entry at error whenever it is seen.
func logChange(log zerolog.Logger, ch Change, loaded bool) {
	if ch.Err != nil {
		log.Error().Str("error", ch.Err.Error()).Str("bucket", ch.Bucket).Str("key", Truncate(ch.KeyName, 100)).
			Uint64("revision", ch.Revision).Stringer("op", ch.Op).
			Msg("kv entry rejected: it is not used (resolves of its scope answer 422); fix or delete it")
		return
	}
	ev := log.Debug()
	if loaded {
		ev = log.Info()
	}
	ev.Str("bucket", ch.Bucket).Str("key", ch.KeyName).Uint64("revision", ch.Revision).
		Stringer("op", ch.Op).Msg("kv change applied")
}

// recreate re-creates a watched bucket that was deleted, loudly.
func (s *Store) recreate(ctx context.Context, cfg StoreConfig, rc BucketConfig, bucket, desc string, log zerolog.Logger) error {
	if err := rc.defaults(); err != nil {
		return err
	}
	if cfg.OnBucket != nil {
		cfg.OnBucket(bucket, "deleted")
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := cfg.JetStream.CreateKeyValue(rctx, jetstream.KeyValueConfig{Bucket: bucket, Description: desc,
		History: uint8(rc.History), Replicas: rc.Replicas})
	if errors.Is(err, jetstream.ErrBucketExists) {
		return nil // someone else re-created it
	}
	if err != nil {
		log.Error().Err(err).Str("bucket", bucket).Msg("kv bucket deleted and cannot be re-created; retrying (resolves answer 503 meanwhile)")
		return err
	}
	log.Error().Str("bucket", bucket).Int("history", rc.History).Int("replicas", rc.Replicas).
		Msg("kv bucket was deleted: re-created empty; every key it held is gone: put them back (tetherctl import, nats kv put) from your backups")
	if cfg.OnBucket != nil {
		cfg.OnBucket(bucket, "re-created")
	}
	return nil
}

// checkSettings flags a configs bucket whose history is below MinHistory:
// rollback and history need the revisions.
func (s *Store) checkSettings(cfg StoreConfig, bucket string, sc jetstream.StreamConfig, log zerolog.Logger) {
	problem := ""
	if bucket == BucketConfigs && sc.MaxMsgsPerSubject < MinHistory {
		problem = fmt.Sprintf("bucket %s keeps %d revisions per key, fewer than the %d the contract needs for history and rollback: re-create it with --history %d or more", bucket, sc.MaxMsgsPerSubject, MinHistory, DefaultHistory)
	}
	s.mu.Lock()
	was := s.problems[bucket]
	if problem == "" {
		delete(s.problems, bucket)
	} else {
		s.problems[bucket] = problem
	}
	s.mu.Unlock()
	if problem != "" && problem != was {
		log.Error().Str("bucket", bucket).Int64("history", sc.MaxMsgsPerSubject).Msg(problem)
	}
	if problem != was && cfg.OnBucket != nil {
		cfg.OnBucket(bucket, problem)
	}
}

// Problems lists what is wrong with the watched buckets' settings, sorted.
func (s *Store) Problems() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.problems))
	for _, p := range s.problems {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Index is the store's index.
func (s *Store) Index() *Index { return s.index }

// WaitReady blocks until the index is ready or ctx is done.
func (s *Store) WaitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("kvconfig: waiting for initial KV values: %w", ctx.Err())
	}
}

// Healthy reports whether every watcher is running and not stalled.
func (s *Store) Healthy() bool {
	for _, w := range s.watchers {
		if !w.Healthy() {
			return false
		}
	}
	return len(s.watchers) > 0
}

// Restarts sums the watchers' re-creations.
func (s *Store) Restarts() uint64 {
	var n uint64
	for _, w := range s.watchers {
		n += w.Restarts()
	}
	return n
}

// CheckWatchers asks every watcher to compare its progress now, e.g. after
// the connection reconnected.
func (s *Store) CheckWatchers() {
	for _, w := range s.watchers {
		w.Check()
	}
}

// Close stops the watchers and waits for them. Safe to call twice.
func (s *Store) Close() {
	for _, w := range s.watchers {
		w.Close()
	}
}

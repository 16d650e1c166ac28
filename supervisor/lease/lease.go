package lease

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Names and defaults.
const (
	// Bucket holds the leader lease: key Key → the holder's id.
	Bucket = "mcp_leader"
	// Key is the lease key.
	Key = "supervisor"
	// DefaultTTL is how long a lease lives without renewal.
	DefaultTTL = 3 * time.Second
	// MinTTL is the shortest lease TTL accepted.
	MinTTL = 30 * time.Millisecond
)

// Config configures a Lease.
type Config struct {
	// JS is the JetStream context used to open or create Bucket.
	JS jetstream.JetStream
	// ID names this supervisor replica; required, unique per process.
	ID string
	// TTL: the lease expires this long after its last renewal; renewals
	// happen every TTL/3. Default DefaultTTL; at least MinTTL.
	// When Bucket already exists, its max age wins (every replica
	// must renew on the same clock), with a warning if it differs.
	TTL time.Duration
	// Replicas of the lease bucket when it is created. Default 1.
	Replicas int
	// OnChange is called (from the lease goroutine) when this replica gains
	// or loses leadership. Optional.
	OnChange func(leader bool)
	Logger   zerolog.Logger
}

// Lease elects exactly one leader among supervisor replicas with a KV key
// whose bucket's max age is the TTL: the holder renews it by
// compare-and-swap on its revision; others try to create it, which only
// succeeds once it has expired or been released. A holder that cannot
// renew within the TTL stops calling itself leader before anyone else can
// take over.
//
// The clock assumption: the holder measures its TTL/3 renewals and its
// 2/3-TTL step-down on its own monotonic clock from the moment it sent
// the renewal; the key expires by the clock of the server leading the
// lease stream, from when that server stored the renewal. Both start
// after the send, so a holder always steps down before the server can
// expire its key, unless the server's clock runs more than TTL/3 faster
// than the holder's over one TTL (a rate, not an offset: NTP-synchronised
// clocks that disagree by minutes are fine). A stream leader that moves to
// another server applies that server's clock from then on. The server
// expires late, never early: nats-server checks a stream's max age at
// most every 250 ms and reads its clock in 100 ms ticks, so a dead
// holder's key outlives the TTL by up to about 0.35 s, and a failover
// takes up to TTL + 0.35 s + TTL/3 (the next campaign) + the takeover:
// more than 2x the TTL when the TTL is below about 1 s. What the
// assumption guards is only who commands; the fence (Fence: commands
// carry it, mcp_fleet writes are compare-and-swap) makes a deposed
// leader's late commands and writes have no effect even if it breaks.
type Lease struct {
	cfg    Config
	kv     jetstream.KeyValue
	leader atomic.Bool
	holder atomic.Value // string
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	first chan struct{} // closed after the first campaign

	rev     uint64
	renewed time.Time
	// fenceUntil is set after this replica re-created a deleted bucket: it
	// holds and renews the key, but leads only from then on (see step).
	fenceUntil time.Time
	// renewedAt is renewed as monotonic nanoseconds since epoch, for
	// IsLeader's expiry check.
	epoch     time.Time
	renewedAt atomic.Int64

	// Fencing: the lease revision at which this replica became leader,
	// and the term: the lease bucket's creation time (unix ms), which
	// orders a re-created bucket's revisions after the old one's.
	fenceRev atomic.Uint64
	term     atomic.Int64
	// seenAt is when a leader (this replica or another) was last known to
	// hold the lease, as monotonic ns since epoch.
	seenAt atomic.Int64
	// resignUntil: after Resign this replica does not campaign until then.
	resignUntil time.Time
	resign      chan struct{}
}

// bucketTTL is the lease TTL every replica must use: the existing bucket's
// max age. A bucket without one would never let a dead leader's key expire.
func bucketTTL(ctx context.Context, kv jetstream.KeyValue, cfg Config) (time.Duration, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("lease: lease bucket %s status: %w", Bucket, err)
	}
	ttl := st.TTL()
	switch {
	case ttl < MinTTL:
		return 0, fmt.Errorf("lease: lease bucket %s has max age %v (below %v): a dead leader's lease would not expire in time; delete the bucket to re-create it", Bucket, ttl, MinTTL)
	case ttl != cfg.TTL:
		cfg.Logger.Warn().Dur("configured_ms", cfg.TTL).Dur("bucket_ms", ttl).
			Msg("lease bucket exists with another TTL; using the bucket's so every replica renews alike")
	}
	return ttl, nil
}

// openBucket opens the lease bucket, creating it (TTL and replicas from
// cfg) when it does not exist; created reports that.
func openBucket(ctx context.Context, cfg Config) (kv jetstream.KeyValue, created bool, err error) {
	kv, err = cfg.JS.KeyValue(ctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = cfg.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: Bucket, Description: "Tether supervisor leader lease", History: 1, TTL: cfg.TTL, Replicas: cfg.Replicas,
		})
		created = err == nil
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = cfg.JS.KeyValue(ctx, Bucket)
		}
	}
	if err != nil {
		return nil, false, fmt.Errorf("lease: lease bucket %s: %w", Bucket, err)
	}
	return kv, created, nil
}

// Start opens the lease bucket and starts campaigning.
func Start(ctx context.Context, cfg Config) (*Lease, error) {
	if cfg.ID == "" || cfg.JS == nil {
		return nil, errors.New("lease: Config needs JS and ID")
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < MinTTL {
		return nil, fmt.Errorf("lease: Config.TTL %v is below %v", cfg.TTL, MinTTL)
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	kv, _, err := openBucket(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if cfg.TTL, err = bucketTTL(ctx, kv, cfg); err != nil {
		return nil, err
	}
	lctx, cancel := context.WithCancel(context.Background())
	l := &Lease{cfg: cfg, kv: kv, cancel: cancel, done: make(chan struct{}), first: make(chan struct{}), epoch: time.Now(),
		resign: make(chan struct{}, 1)}
	l.holder.Store("")
	l.readTerm(ctx)
	go l.run(lctx)
	return l, nil
}

// IsLeader reports whether this replica holds an unexpired lease.
// It is false once two thirds of the TTL have passed since the last
// successful renewal, even before the renewal loop notices: another replica
// can take the lease only after the full TTL.
func (l *Lease) IsLeader() bool {
	return l.leader.Load() && time.Since(l.epoch)-time.Duration(l.renewedAt.Load()) < l.cfg.TTL*2/3
}

// Fence is this replica's leadership: the lease bucket's term (its
// creation time, unix ms) and the lease revision at which it became
// leader. Commands carry both; an agent ignores commands below the
// highest (term, epoch) it has accepted, so a deposed leader's late
// commands have no effect. Zero when not leading.
func (l *Lease) Fence() (term int64, epoch uint64) {
	if !l.leader.Load() {
		return 0, 0
	}
	return l.term.Load(), l.fenceRev.Load()
}

// SinceLeader is how long no leader has been known to hold the lease
// (zero while one does).
func (l *Lease) SinceLeader() time.Duration {
	if l.IsLeader() {
		return 0
	}
	return time.Since(l.epoch) - time.Duration(l.seenAt.Load())
}

// Resign gives the lease up (a leader that cannot take over the fleet) and
// keeps this replica from campaigning for one TTL, so another replica
// leads meanwhile.
func (l *Lease) Resign() {
	select {
	case l.resign <- struct{}{}:
	default:
	}
}

// readTerm records the lease bucket's creation time as the term.
func (l *Lease) readTerm(ctx context.Context) {
	st, err := l.cfg.JS.Stream(ctx, "KV_"+Bucket)
	if err != nil {
		return
	}
	l.term.Store(st.CachedInfo().Created.UnixMilli())
}

// Holder is the id of the last known holder ("" if none seen).
func (l *Lease) Holder() string { return l.holder.Load().(string) }

// Campaigned is closed once the first campaign (right at start) is over:
// by then IsLeader says whether this replica won.
func (l *Lease) Campaigned() <-chan struct{} { return l.first }

func (l *Lease) run(ctx context.Context) {
	defer close(l.done)
	tick := time.NewTicker(l.cfg.TTL / 3)
	defer tick.Stop()
	for i := 0; ; i++ {
		l.step(ctx)
		if i == 0 {
			close(l.first)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-l.resign:
			l.doResign(ctx)
		}
	}
}

// doResign deletes the key this replica holds and pauses campaigning.
func (l *Lease) doResign(ctx context.Context) {
	if !l.leader.Load() {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, l.cfg.TTL/3)
	defer cancel()
	_ = l.kv.Delete(cctx, Key, jetstream.LastRevision(l.rev))
	l.resignUntil = time.Now().Add(l.cfg.TTL)
	l.set(false, "", errors.New("resigned: could not take over the fleet in time"))
}

// step renews or campaigns once.
func (l *Lease) step(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, l.cfg.TTL/3)
	defer cancel()
	now := time.Now()
	if !l.fenceUntil.IsZero() {
		// A holder that missed the deletion still calls itself leader until
		// two thirds of a TTL after its last renewal: hold the key (so no one
		// else can take it) for a whole TTL before leading.
		rev, err := l.kv.Update(cctx, Key, []byte(l.cfg.ID), l.rev)
		if err != nil {
			l.fenceUntil = time.Time{} // lost it: campaign again below
		} else {
			l.rev, l.renewed = rev, now
			l.renewedAt.Store(int64(now.Sub(l.epoch)))
			l.seenAt.Store(int64(now.Sub(l.epoch)))
			if now.Before(l.fenceUntil) {
				return
			}
			l.fenceUntil = time.Time{}
			l.set(true, l.cfg.ID, nil)
			return
		}
	}
	if l.leader.Load() {
		rev, err := l.kv.Update(cctx, Key, []byte(l.cfg.ID), l.rev)
		if err == nil {
			l.rev, l.renewed = rev, now
			l.renewedAt.Store(int64(now.Sub(l.epoch)))
			l.seenAt.Store(int64(now.Sub(l.epoch)))
			return
		}
		// Keep leading only while the last renewal is surely unexpired.
		if now.Sub(l.renewed) < l.cfg.TTL*2/3 && !errors.Is(err, jetstream.ErrKeyExists) {
			l.cfg.Logger.Warn().Err(err).Msg("lease renewal failed; retrying")
			return
		}
		l.set(false, "", err)
	}
	if now.Before(l.resignUntil) {
		l.observe(cctx, now)
		return
	}
	rev, err := l.kv.Create(cctx, Key, []byte(l.cfg.ID))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		// The bucket may be gone (a publish to a deleted stream just times
		// out): without it no replica could ever lead again, so open or
		// re-create it and campaign at once.
		octx, ocancel := context.WithTimeout(ctx, l.cfg.TTL/3)
		defer ocancel()
		kv, created, oerr := openBucket(octx, l.cfg)
		if oerr != nil {
			l.cfg.Logger.Error().Err(oerr).Msg("lease bucket missing and cannot be re-created; retrying")
			return
		}
		if created {
			l.cfg.Logger.Warn().Str("bucket", Bucket).Dur("ttl_ms", l.cfg.TTL).Msg("lease bucket was missing (deleted?): re-created it")
		}
		l.kv = kv
		l.readTerm(octx)
		if !created {
			return // it exists after all: campaign at the next step
		}
		if rev, err = l.kv.Create(octx, Key, []byte(l.cfg.ID)); err == nil {
			l.rev, l.renewed, l.fenceUntil = rev, now, now.Add(l.cfg.TTL)
			l.fenceRev.Store(rev)
			l.renewedAt.Store(int64(now.Sub(l.epoch)))
			l.holder.Store(l.cfg.ID)
			l.cfg.Logger.Warn().Dur("fence_ms", l.cfg.TTL).Msg("holding the lease one TTL before leading, so a holder that missed the deletion has stepped down")
			return
		}
	}
	if err == nil {
		l.rev, l.renewed = rev, now
		l.renewedAt.Store(int64(now.Sub(l.epoch)))
		l.seenAt.Store(int64(now.Sub(l.epoch)))
		l.fenceRev.Store(rev)
		if l.term.Load() == 0 {
			l.readTerm(cctx)
		}
		l.set(true, l.cfg.ID, nil)
		return
	}
	l.observe(cctx, now)
}

// observe records the current holder, if any.
func (l *Lease) observe(ctx context.Context, now time.Time) {
	if e, gerr := l.kv.Get(ctx, Key); gerr == nil {
		l.holder.Store(string(e.Value()))
		l.seenAt.Store(int64(now.Sub(l.epoch)))
	}
}

func (l *Lease) set(leader bool, holder string, err error) {
	if holder != "" {
		l.holder.Store(holder)
	}
	if l.leader.Swap(leader) == leader {
		return
	}
	ev := l.cfg.Logger.Info()
	if err != nil {
		ev = l.cfg.Logger.Warn().Err(err)
	}
	ev.Bool("leader", leader).Str("id", l.cfg.ID).Msg("leadership changed")
	if l.cfg.OnChange != nil {
		l.cfg.OnChange(leader)
	}
}

// Close stops campaigning and, if leading, releases the lease so another
// replica takes over at its next try instead of after the TTL, waiting at
// most TTL/3 for that. Safe twice.
func (l *Lease) Close() { l.Release(context.Background()) }

// Release is Close with its wait for the release bounded by ctx too: a
// lease it could not release (NATS unreachable) expires after the TTL.
// Close and Release are safe to call twice, in any mix; only the first
// call releases.
func (l *Lease) Release(ctx context.Context) {
	l.once.Do(func() {
		l.cancel()
		<-l.done
		if l.leader.Load() {
			ctx, cancel := context.WithTimeout(ctx, l.cfg.TTL/3)
			defer cancel()
			_ = l.kv.Delete(ctx, Key, jetstream.LastRevision(l.rev))
			l.set(false, "", nil)
		}
	})
}

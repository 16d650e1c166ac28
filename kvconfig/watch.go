package kvconfig

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// DefaultCheckInterval is how often a Watcher compares its progress with
// its bucket.
const DefaultCheckInterval = 2 * time.Second

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	// Bucket is the KV bucket to watch. Required.
	Bucket string
	// Keys are the key filters to watch (NATS wildcards allowed); none
	// watches every key.
	Keys []string
	// JetStream returns the JetStream context the watcher opens on. It is
	// called at every (re)open, so a client that rebuilds its connection
	// hands out its current one. Required.
	JetStream func() (jetstream.JetStream, error)
	// Handle receives every entry (put, delete, purge) of the watched keys
	// in revision order, never one twice, on the watcher's goroutine. A nil
	// entry means the initial values are all in: sent once after start and
	// once again after every Reset. Required.
	Handle func(jetstream.KeyValueEntry)
	// Reset is called when the bucket was deleted and re-created (its
	// stream was created anew, or its last sequence went below the revision
	// applied): the receiver must forget every key of the bucket, which is
	// then reloaded from its first revision. Optional.
	Reset func()
	// Restarted is called each time the underlying watcher is re-created,
	// with the reason. Optional (metrics).
	Restarted func(reason string)
	// CheckInterval is how often progress is checked: a watcher that is
	// behind the newest revision of its watched keys and made no progress
	// over two checks in a row is dead and is re-created from its last
	// revision. Default DefaultCheckInterval (2 s).
	CheckInterval time.Duration
	// RequestTimeout bounds each JetStream request: opening the watcher
	// and each progress check. Default CheckInterval.
	RequestTimeout time.Duration
	// RetryDelay is the wait before the attempt-th (1, 2, …) retry of a
	// failed open; nil waits CheckInterval every time.
	RetryDelay func(attempt int) time.Duration
	// Missing is called when the bucket does not exist (it was deleted, or
	// never created); the keys of a bucket that existed are dropped first
	// (Reset), so nothing is answered from a bucket that no longer exists.
	// It may re-create the bucket: on nil the watcher opens again at once.
	// Optional: without it the watcher retries until the bucket is back.
	Missing func(ctx context.Context) error
	// Opened is called after each successful open with the bucket's
	// stream information (configuration, creation time: its epoch, and
	// last sequence), before any entry of that open is handled. Optional.
	Opened func(*jetstream.StreamInfo)
	// MetaOnly delivers entries without their values (operation, key and
	// revision only): for a watcher that needs only deletes.
	MetaOnly bool
	// Logger receives one line per restart. Default: disabled.
	Logger *zerolog.Logger
}

// Watcher keeps a KV bucket's changes flowing into a handler and survives
// the known failure of a KV watcher that silently stops after a reconnect
// (nats.go#1777): it compares its progress with the newest revision stored
// for its keys and re-creates itself from its last revision, so no update
// is missed and none is delivered twice. It is the one KV-watcher
// implementation: the supervisor's index and agentproto's registered
// watchers both run on it.
type Watcher struct {
	cfg      WatcherConfig
	log      zerolog.Logger
	cancel   context.CancelFunc
	done     chan struct{}
	kick     chan struct{}
	restartc chan string
	rev      atomic.Uint64
	ready    atomic.Bool
	restarts atomic.Uint64
	healthy  atomic.Bool
	once     sync.Once

	// Owned by the watcher goroutine.
	created time.Time // creation time of the bucket's stream: its epoch
	opened  int
}

// StartWatcher starts watching and returns at once; Ready reports when the
// initial values are in. Close stops it.
func StartWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.Bucket == "" || cfg.JetStream == nil || cfg.Handle == nil {
		return nil, errors.New("kvconfig: WatcherConfig needs Bucket, JetStream and Handle")
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = cfg.CheckInterval
	}
	if cfg.CheckInterval < 0 || cfg.RequestTimeout < 0 {
		return nil, fmt.Errorf("kvconfig: WatcherConfig.CheckInterval %v and RequestTimeout %v must be positive", cfg.CheckInterval, cfg.RequestTimeout)
	}
	cfg.Keys = slices.Clone(cfg.Keys)
	log := zerolog.Nop()
	if cfg.Logger != nil {
		log = cfg.Logger.With().Str("bucket", cfg.Bucket).Logger()
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{cfg: cfg, log: log, cancel: cancel, done: make(chan struct{}), kick: make(chan struct{}, 1), restartc: make(chan string, 1)}
	go w.run(ctx)
	return w, nil
}

// Revision is the last revision handled.
func (w *Watcher) Revision() uint64 { return w.rev.Load() }

// Ready reports whether the initial values were handled.
func (w *Watcher) Ready() bool { return w.ready.Load() }

// Healthy reports whether the watcher is open and not known to be stalled.
func (w *Watcher) Healthy() bool { return w.healthy.Load() }

// Restarts counts re-creations of the underlying watcher.
func (w *Watcher) Restarts() uint64 { return w.restarts.Load() }

// Check asks for a progress check now (e.g. after a reconnect).
func (w *Watcher) Check() {
	select {
	case w.kick <- struct{}{}:
	default: // one is queued already
	}
}

// Restart asks for the underlying watcher to be re-created now from its
// last revision (e.g. after the connection was rebuilt).
func (w *Watcher) Restart(reason string) {
	if reason == "" {
		reason = "restart requested"
	}
	select {
	case w.restartc <- reason:
	default: // one is queued already
	}
}

// Close stops the watcher and waits for it. Safe to call twice; not from
// Handle.
func (w *Watcher) Close() {
	w.once.Do(w.cancel)
	<-w.done
}

// session is one open underlying watcher.
type session struct {
	kw     jetstream.KeyWatcher
	stream jetstream.Stream
	cancel context.CancelFunc
}

func (s *session) stop() {
	if s != nil {
		StopWatcher(s.kw)
		s.cancel()
	}
}

func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	tick := time.NewTicker(w.cfg.CheckInterval)
	defer tick.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	var (
		sess     *session
		updates  <-chan jetstream.KeyValueEntry
		lag      lagState
		failures int
	)
	defer func() { sess.stop() }()
	reopen := func(reason string, level zerolog.Level) {
		sess.stop()
		sess, updates, lag = nil, nil, lagState{}
		w.healthy.Store(false)
		w.log.WithLevel(level).Str("reason", reason).Uint64("revision", w.rev.Load()).Msg("kv watcher restarting")
		if w.cfg.Restarted != nil {
			w.cfg.Restarted(reason)
		}
		retry.Reset(0)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			var err error
			if sess, err = w.open(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				if errors.Is(err, jetstream.ErrBucketNotFound) {
					if !w.created.IsZero() {
						w.created = time.Time{}
						w.reset("bucket deleted")
					}
					if w.cfg.Missing != nil {
						if merr := w.cfg.Missing(ctx); merr == nil {
							retry.Reset(0)
							continue
						} else {
							err = merr
						}
					}
				}
				failures++
				w.log.Warn().Err(err).Int("attempt", failures).Msg("kv watcher cannot open; retrying")
				retry.Reset(w.retryDelay(failures))
				continue
			}
			failures, updates, lag = 0, sess.kw.Updates(), lagState{}
			w.healthy.Store(true)
			if w.opened++; w.opened > 1 {
				w.restarts.Add(1)
			}
		case e, ok := <-updates:
			if !ok {
				reopen("updates channel closed: the watcher died", zerolog.WarnLevel)
				continue
			}
			w.handle(e)
		case <-tick.C:
			w.Check()
		case <-w.kick:
			if sess != nil {
				var why string
				if lag, why = w.check(ctx, sess, lag); why != "" {
					reopen(why, zerolog.WarnLevel)
				}
			}
		case reason := <-w.restartc:
			reopen(reason, zerolog.InfoLevel) // asked for: a reconnect or rebuild
		}
	}
}

func (w *Watcher) retryDelay(attempt int) time.Duration {
	if w.cfg.RetryDelay != nil {
		return w.cfg.RetryDelay(attempt)
	}
	return w.cfg.CheckInterval
}

// open creates an underlying watcher resuming after the last revision
// handled; if the bucket's stream is not the one it watched before, the
// bucket was re-created and it starts over.
func (w *Watcher) open(ctx context.Context) (*session, error) {
	js, err := w.cfg.JetStream()
	if err != nil {
		return nil, fmt.Errorf("kvconfig: watch %s: %w", w.cfg.Bucket, err)
	}
	rctx, rcancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	defer rcancel()
	kv, err := js.KeyValue(rctx, w.cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("kvconfig: watch %s: %w", w.cfg.Bucket, err)
	}
	stream, err := js.Stream(rctx, "KV_"+w.cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("kvconfig: watch %s: stream: %w", w.cfg.Bucket, err)
	}
	info := stream.CachedInfo()
	if why := w.newEpoch(info.Created, info.State.LastSeq); why != "" {
		w.reset(why)
	}
	if w.cfg.Opened != nil {
		w.cfg.Opened(info)
	}
	var opts []jetstream.WatchOpt
	if rev := w.rev.Load(); rev > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(rev+1))
	}
	if w.cfg.MetaOnly {
		opts = append(opts, jetstream.MetaOnly())
	}
	// The watch context lives as long as the session (cancelling it
	// unsubscribes); a timer bounds only its creation.
	wctx, wcancel := context.WithCancel(ctx)
	t := time.AfterFunc(w.cfg.RequestTimeout, wcancel)
	var kw jetstream.KeyWatcher
	if len(w.cfg.Keys) == 0 {
		kw, err = kv.WatchAll(wctx, opts...)
	} else {
		kw, err = kv.WatchFiltered(wctx, slices.Clone(w.cfg.Keys), opts...)
	}
	if !t.Stop() || err != nil {
		wcancel()
		if err == nil {
			StopWatcher(kw)
			err = context.DeadlineExceeded
		}
		return nil, fmt.Errorf("kvconfig: watch %s: %w", w.cfg.Bucket, err)
	}
	return &session{kw: kw, stream: stream, cancel: wcancel}, nil
}

// newEpoch reports why the bucket's stream is not the one watched so far,
// or "": it was created at another time, or its last sequence is below
// the revision already handled.
func (w *Watcher) newEpoch(created time.Time, lastSeq uint64) string {
	prev := w.created
	w.created = created
	rev := w.rev.Load()
	switch {
	case !prev.IsZero() && !created.Equal(prev):
		return fmt.Sprintf("bucket re-created (its stream was created %s, not %s): reloading", created.UTC().Format(time.RFC3339Nano), prev.UTC().Format(time.RFC3339Nano))
	case lastSeq < rev:
		return fmt.Sprintf("bucket re-created (last sequence %d < revision %d handled): reloading", lastSeq, rev)
	}
	return ""
}

// reset forgets the old bucket: the receiver drops its keys, and the
// initial values of the new one are handled and marked again.
func (w *Watcher) reset(why string) {
	w.log.Warn().Str("reason", why).Uint64("revision", w.rev.Load()).Msg("kv watcher: new bucket epoch")
	w.rev.Store(0)
	w.ready.Store(false)
	if w.cfg.Reset != nil {
		w.cfg.Reset()
	}
}

func (w *Watcher) handle(e jetstream.KeyValueEntry) {
	if e == nil {
		if !w.ready.Swap(true) {
			w.cfg.Handle(nil)
		}
		return
	}
	if e.Revision() <= w.rev.Load() {
		return // redelivered after a resume
	}
	w.cfg.Handle(e)
	w.rev.Store(e.Revision())
}

// lagState remembers whether the watcher was behind at the last check, and
// at which revision.
type lagState struct {
	behind bool
	at     uint64
}

// check compares the last revision handled with the bucket. A stream
// created anew or gone backwards is a new epoch; otherwise the watcher is
// behind only if a watched key holds a newer revision — the stream's last
// sequence alone would count delete markers that a compaction removed,
// which no watcher can ever deliver. Behind at the same revision on two
// checks in a row means dead. It returns why to re-create, or "".
func (w *Watcher) check(ctx context.Context, s *session, prev lagState) (lagState, string) {
	cctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	defer cancel()
	info, err := s.stream.Info(cctx)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		// The bucket was deleted under the watcher: reopening finds it
		// missing, drops its keys and (with Missing) re-creates it.
		return lagState{}, "bucket deleted"
	}
	if err != nil {
		w.log.Debug().Err(err).Msg("kv watcher: progress check unavailable")
		return prev, ""
	}
	if why := w.newEpoch(info.Created, info.State.LastSeq); why != "" {
		w.reset(why)
		return lagState{}, why
	}
	rev := w.rev.Load()
	if info.State.LastSeq <= rev {
		return lagState{}, ""
	}
	latest, err := w.latest(cctx, s.stream)
	if err != nil {
		w.log.Debug().Err(err).Msg("kv watcher: progress check unavailable")
		return prev, ""
	}
	switch {
	case latest <= rev:
		return lagState{}, ""
	case prev.behind && prev.at == rev:
		return lagState{}, fmt.Sprintf("stalled at revision %d while its keys are at %d", rev, latest)
	}
	return lagState{behind: true, at: rev}, ""
}

// latest is the newest revision stored for the watched keys.
func (w *Watcher) latest(ctx context.Context, stream jetstream.Stream) (uint64, error) {
	filters := w.cfg.Keys
	if len(filters) == 0 {
		filters = []string{">"}
	}
	var top uint64
	for _, k := range filters {
		m, err := stream.GetLastMsgForSubject(ctx, "$KV."+w.cfg.Bucket+"."+k)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			continue
		case err != nil:
			return 0, err
		}
		top = max(top, m.Sequence)
	}
	return top, nil
}

// stopDrainTimeout bounds StopWatcher's wait for the updates channel.
const stopDrainTimeout = 2 * time.Second

// StopWatcher stops a jetstream KeyWatcher and drains its updates channel
// until nats.go closes it (bounded by a timeout). Stopping without draining
// can leave nats.go's delivery goroutine blocked forever on a full channel.
func StopWatcher(w jetstream.KeyWatcher) {
	if w == nil {
		return
	}
	_ = w.Stop()
	timeout := time.NewTimer(stopDrainTimeout)
	defer timeout.Stop()
	for {
		select {
		case _, ok := <-w.Updates():
			if !ok {
				return
			}
		case <-timeout.C:
			return
		}
	}
}

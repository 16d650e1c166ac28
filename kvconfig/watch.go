package kvconfig

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

// DefaultCheckInterval is how often a Watcher compares its progress with
// the bucket's stream.
const DefaultCheckInterval = 2 * time.Second

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	// KV is the bucket to watch. Required.
	KV jetstream.KeyValue
	// Apply receives every put, delete and purge in revision order. Required.
	Apply func(key string, rev uint64, op Op, value []byte)
	// Ready is called once, when the initial values have been applied.
	Ready func()
	// Reset is called before a full reload (the bucket's stream went
	// backwards, i.e. it was deleted and re-created); the receiver must
	// forget every key of the bucket. Optional.
	Reset func()
	// Restarted is called after the watcher was re-created, with the reason.
	// Optional (metrics).
	Restarted func(reason string)
	// CheckInterval is how often the watcher's last revision is compared
	// with the stream's last sequence; a watcher that is behind and made no
	// progress over two checks is declared dead and re-created from its last
	// revision. Default DefaultCheckInterval; must be > 0 after defaults.
	CheckInterval time.Duration
	// Logger receives one line per restart. Default: disabled.
	Logger *zerolog.Logger
}

// Watcher keeps a KV bucket's changes flowing into Apply and survives the
// known failure of a KV watcher that silently stops after a reconnect: it
// compares its progress with the stream and re-creates itself from its last
// revision, so no update is missed.
type Watcher struct {
	cfg      WatcherConfig
	log      zerolog.Logger
	cancel   context.CancelFunc
	done     chan struct{}
	kick     chan struct{}
	rev      atomic.Uint64
	ready    atomic.Bool
	restarts atomic.Uint64
	healthy  atomic.Bool
	once     sync.Once
}

// StartWatcher starts watching and returns at once; Ready reports when the
// initial values are in. Close stops it.
func StartWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.KV == nil || cfg.Apply == nil {
		return nil, errors.New("kvconfig: WatcherConfig needs KV and Apply")
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.CheckInterval < 0 {
		return nil, fmt.Errorf("kvconfig: WatcherConfig.CheckInterval %v must be positive", cfg.CheckInterval)
	}
	log := zerolog.Nop()
	if cfg.Logger != nil {
		log = cfg.Logger.With().Str("bucket", cfg.KV.Bucket()).Logger()
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{cfg: cfg, log: log, cancel: cancel, done: make(chan struct{}), kick: make(chan struct{}, 1)}
	go w.run(ctx)
	return w, nil
}

// Revision is the last revision applied.
func (w *Watcher) Revision() uint64 { return w.rev.Load() }

// Ready reports whether the initial values were applied.
func (w *Watcher) Ready() bool { return w.ready.Load() }

// Healthy reports whether the watcher is running and not known to be stalled.
func (w *Watcher) Healthy() bool { return w.healthy.Load() }

// Restarts counts re-creations.
func (w *Watcher) Restarts() uint64 { return w.restarts.Load() }

// Check asks for a progress check now (e.g. after a reconnect).
func (w *Watcher) Check() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Close stops the watcher and waits for it. Safe to call twice.
func (w *Watcher) Close() {
	w.once.Do(w.cancel)
	<-w.done
}

func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	tick := time.NewTicker(w.cfg.CheckInterval)
	defer tick.Stop()
	var (
		kw      jetstream.KeyWatcher
		updates <-chan jetstream.KeyValueEntry
		lag     lagState
	)
	stop := func() {
		if kw != nil {
			StopWatcher(kw)
			kw, updates = nil, nil
		}
	}
	defer stop()
	restart := func(reason string) {
		stop()
		lag = lagState{}
		w.healthy.Store(false)
		w.restarts.Add(1)
		w.log.Warn().Str("reason", reason).Uint64("revision", w.rev.Load()).Msg("kv watcher restarting")
		if w.cfg.Restarted != nil {
			w.cfg.Restarted(reason)
		}
	}
	for {
		if kw == nil {
			var err error
			kw, err = w.open(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				w.log.Warn().Err(err).Msg("kv watcher: cannot start, retrying at next check")
			} else {
				updates = kw.Updates()
				w.healthy.Store(true)
			}
		}
		select {
		case <-ctx.Done():
			return
		case e, ok := <-updates:
			if !ok {
				restart("updates channel closed")
				continue
			}
			w.handle(e)
		case <-tick.C:
			lag = w.check(ctx, kw == nil, lag, restart)
		case <-w.kick:
			lag = w.check(ctx, kw == nil, lag, restart)
		}
	}
}

func (w *Watcher) open(ctx context.Context) (jetstream.KeyWatcher, error) {
	var opts []jetstream.WatchOpt
	if rev := w.rev.Load(); rev > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(rev+1))
	}
	return w.cfg.KV.WatchAll(ctx, opts...)
}

func (w *Watcher) handle(e jetstream.KeyValueEntry) {
	if e == nil {
		if !w.ready.Swap(true) && w.cfg.Ready != nil {
			w.cfg.Ready()
		}
		return
	}
	if e.Revision() <= w.rev.Load() {
		return // redelivered after a resume
	}
	op := OpPut
	if e.Operation() != jetstream.KeyValuePut {
		op = OpDelete
	}
	w.cfg.Apply(e.Key(), e.Revision(), op, e.Value())
	w.rev.Store(e.Revision())
}

// lagState remembers whether the watcher was behind the stream at the last
// check, and at which revision.
type lagState struct {
	behind bool
	at     uint64
}

// check compares progress with the stream and restarts a watcher that was
// behind at the same revision at the previous check too.
func (w *Watcher) check(ctx context.Context, down bool, prev lagState, restart func(string)) lagState {
	if down {
		return lagState{} // the loop re-opens it
	}
	cctx, cancel := context.WithTimeout(ctx, w.cfg.CheckInterval)
	defer cancel()
	st, err := w.cfg.KV.Status(cctx)
	if err != nil {
		w.log.Debug().Err(err).Msg("kv watcher: status unavailable")
		return prev
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return lagState{}
	}
	last, rev := bs.StreamInfo().State.LastSeq, w.rev.Load()
	switch {
	case last < rev:
		w.rev.Store(0)
		w.ready.Store(false)
		if w.cfg.Reset != nil {
			w.cfg.Reset()
		}
		restart(fmt.Sprintf("stream went backwards (last sequence %d < applied revision %d): bucket re-created, reloading", last, rev))
		return lagState{}
	case last == rev:
		return lagState{}
	case prev.behind && prev.at == rev:
		restart(fmt.Sprintf("stalled at revision %d while the stream is at %d", rev, last))
		return lagState{}
	}
	return lagState{behind: true, at: rev}
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

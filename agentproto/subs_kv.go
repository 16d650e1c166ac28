package agentproto

import (
	"context"
	"errors"
	"fmt"
	"github.com/tether-dev/tether/kvconfig"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// KVHandler receives a watched bucket's entries in revision order. A nil
// entry, sent once, means the initial values are all delivered (as in
// jetstream.KeyWatcher). Entries are never repeated: after a restart the
// watcher resumes from the revision after the last one delivered.
type KVHandler func(jetstream.KeyValueEntry)

// KVWatch is a KV watcher registered with a Client. It is re-created from
// its last revision after every reconnect and rebuild, when its updates
// stop (the watcher died), and when it stalls behind its bucket, so no
// update is missed: the failure of nats.go#1777 and nats.c#988.
type KVWatch struct {
	c       *Client
	bucket  string
	keys    []string
	handler KVHandler
	log     zerolog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	kick   chan struct{}
	once   sync.Once

	rev      atomic.Uint64 // last revision delivered
	restarts atomic.Uint64
	ready    bool // the nil entry was delivered; watcher goroutine only
}

// WatchKV watches keys (NATS wildcards allowed; none means every key) of
// bucket and calls handler for each entry, on one goroutine, in order. It
// returns at once; the watcher opens when the bucket can be reached.
func (c *Client) WatchKV(bucket string, keys []string, handler KVHandler) (*KVWatch, error) {
	if !literalSubject(bucket) || strings.Contains(bucket, ".") {
		return nil, fmt.Errorf("%w: KV bucket %q", ErrInvalidSubject, bucket)
	}
	for _, k := range keys {
		if !validSubject(k) {
			return nil, fmt.Errorf("%w: KV key filter %q", ErrInvalidSubject, k)
		}
	}
	if handler == nil {
		return nil, fmt.Errorf("%w: nil KV handler for bucket %q", ErrInvalidSubject, bucket)
	}
	w := &KVWatch{
		c: c, bucket: bucket, keys: slices0(keys), handler: handler,
		log:  c.log.With().Str(logKeyBucket, bucket).Logger(),
		done: make(chan struct{}), kick: make(chan struct{}, 1),
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return nil, ErrClosed
	}
	w.ctx, w.cancel = context.WithCancel(c.ctx)
	c.kvs[w] = struct{}{}
	c.goFn(w.run)
	return w, nil
}

func slices0(s []string) []string { return append([]string(nil), s...) }

// Revision is the last revision delivered to the handler.
func (w *KVWatch) Revision() uint64 { return w.rev.Load() }

// Restarts counts re-creations of the underlying watcher.
func (w *KVWatch) Restarts() uint64 { return w.restarts.Load() }

// Stop stops the watcher and waits for its goroutine. Safe to call twice;
// not from the watcher's own handler.
func (w *KVWatch) Stop() {
	w.c.mu.Lock()
	delete(w.c.kvs, w)
	w.c.mu.Unlock()
	w.once.Do(w.cancel)
	<-w.done
}

// restart asks the watcher to re-create itself from its last revision.
func (w *KVWatch) restart() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// kvSession is one open underlying watcher.
type kvSession struct {
	kw     jetstream.KeyWatcher
	stream jetstream.Stream
	cancel context.CancelFunc
}

func (s *kvSession) stop() {
	if s != nil {
		kvconfig.StopWatcher(s.kw)
		s.cancel()
	}
}

// run keeps one underlying watcher open and feeds the handler.
func (w *KVWatch) run() {
	defer close(w.done)
	check := time.NewTicker(w.c.cfg.KVCheckInterval)
	defer check.Stop()
	b := &delayBackOff{base: w.c.cfg.ReconnectWait, max: w.c.cfg.MaxReconnectWait, jitter: w.c.cfg.jitter()}
	retry := time.NewTimer(0)
	defer retry.Stop()
	var (
		sess    *kvSession
		updates <-chan jetstream.KeyValueEntry
		lag     kvLag
		opened  int
	)
	defer func() { sess.stop() }()
	reopen := func(reason string, level zerolog.Level) {
		sess.stop()
		sess, updates, lag = nil, nil, kvLag{}
		w.log.WithLevel(level).Str("reason", reason).Uint64(logKeyRevision, w.rev.Load()).Msg("agentproto: KV watcher restarting")
		retry.Reset(0)
	}
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-retry.C:
			var err error
			if sess, err = w.open(); err != nil {
				w.log.Warn().Err(err).Msg("agentproto: KV watcher cannot open; retrying")
				retry.Reset(b.NextBackOff())
				continue
			}
			updates, lag = sess.kw.Updates(), kvLag{}
			b.Reset()
			if opened++; opened > 1 {
				w.restarts.Add(1)
				w.c.emit(Event{Kind: EventKVRestarted, Subject: w.bucket, Reason: "re-created from revision"})
			}
		case <-w.kick:
			reopen("reconnected or rebuilt", zerolog.InfoLevel)
		case e, ok := <-updates:
			if !ok {
				reopen("updates stopped: the watcher died", zerolog.WarnLevel)
				continue
			}
			w.deliver(e)
		case <-check.C:
			if sess == nil {
				continue
			}
			var why string
			if lag, why = w.check(sess, lag); why != "" {
				reopen(why, zerolog.WarnLevel)
			}
		}
	}
}

// open creates an underlying watcher on the current connection, resuming
// after the last revision delivered.
func (w *KVWatch) open() (*kvSession, error) {
	nc, _ := w.c.conn()
	if nc == nil {
		return nil, ErrNoConnection
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	rctx, rcancel := context.WithTimeout(w.ctx, w.c.cfg.RequestTimeout)
	defer rcancel()
	kv, err := js.KeyValue(rctx, w.bucket)
	if err != nil {
		return nil, fmt.Errorf("agentproto: KV bucket %s: %w", w.bucket, err)
	}
	stream, err := js.Stream(rctx, "KV_"+w.bucket)
	if err != nil {
		return nil, fmt.Errorf("agentproto: KV bucket %s stream: %w", w.bucket, err)
	}
	var opts []jetstream.WatchOpt
	if rev := w.rev.Load(); rev > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(rev+1))
	}
	// The watch context lives as long as the watcher (cancelling it
	// unsubscribes); a timer bounds only its creation.
	wctx, wcancel := context.WithCancel(w.ctx)
	t := time.AfterFunc(w.c.cfg.RequestTimeout, wcancel)
	kw, err := kv.WatchFiltered(wctx, slices0(w.keys), opts...)
	if !t.Stop() || err != nil {
		wcancel()
		if err == nil {
			_ = kw.Stop()
			err = context.DeadlineExceeded
		}
		return nil, fmt.Errorf("agentproto: KV watch %s: %w", w.bucket, err)
	}
	return &kvSession{kw: kw, stream: stream, cancel: wcancel}, nil
}

// deliver hands e to the handler unless it was delivered already.
func (w *KVWatch) deliver(e jetstream.KeyValueEntry) {
	if e == nil {
		if !w.ready {
			w.ready = true
			w.call(nil)
		}
		return
	}
	if e.Revision() <= w.rev.Load() {
		return // redelivered after a resume
	}
	w.call(e)
	w.rev.Store(e.Revision())
}

func (w *KVWatch) call(e jetstream.KeyValueEntry) {
	if !w.c.handlers.enter() {
		return
	}
	defer w.c.handlers.exit()
	defer func() {
		if r := recover(); r != nil {
			w.log.Error().Interface("panic", r).Msg("agentproto: KV handler panicked")
			w.c.emit(Event{Kind: EventAsyncError, Subject: w.bucket, Err: fmt.Errorf("agentproto: KV handler panic: %v", r)})
		}
	}()
	w.handler(e)
}

// kvLag remembers whether the watcher was behind its bucket at the last
// check, and at which revision.
type kvLag struct {
	behind bool
	at     uint64
}

// check compares the last revision delivered with the bucket's latest
// revision for the watched keys; behind at the same revision on two checks
// in a row means the watcher is dead. It returns why to restart, or "".
func (w *KVWatch) check(sess *kvSession, prev kvLag) (kvLag, string) {
	ctx, cancel := context.WithTimeout(w.ctx, w.c.cfg.RequestTimeout)
	defer cancel()
	latest, err := w.latest(ctx, sess.stream)
	if err != nil {
		w.log.Debug().Err(err).Msg("agentproto: KV progress check unavailable")
		return prev, ""
	}
	rev := w.rev.Load()
	switch {
	case latest <= rev:
		return kvLag{}, ""
	case prev.behind && prev.at == rev:
		return kvLag{}, fmt.Sprintf("stalled at revision %d while the bucket is at %d", rev, latest)
	}
	return kvLag{behind: true, at: rev}, ""
}

// latest is the highest revision stored for the watched keys.
func (w *KVWatch) latest(ctx context.Context, stream jetstream.Stream) (uint64, error) {
	filters := w.keys
	if len(filters) == 0 {
		filters = []string{">"}
	}
	var top uint64
	for _, k := range filters {
		m, err := stream.GetLastMsgForSubject(ctx, "$KV."+w.bucket+"."+k)
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

package agentproto

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/kvconfig"
)

// KVHandler receives a watched bucket's entries in revision order. A nil
// entry means the initial values are all delivered (as in
// jetstream.KeyWatcher): once after the start, and once more if the bucket
// is deleted and re-created, after which entries start over from the new
// bucket's first revision. Entries are never repeated: after a restart the
// watcher resumes from the revision after the last one delivered.
type KVHandler func(jetstream.KeyValueEntry)

// kvRetryMax caps the delay between a KV watcher's restart attempts (from
// Config.ReconnectWait, doubling, with Config.ReconnectJitter).
const kvRetryMax = 2 * time.Second

// KVWatch is a KV watcher registered with a Client. It is re-created from
// its last revision after every reconnect and rebuild, when its updates
// stop (the watcher died), and when it stalls behind its keys, so no
// update is missed: the failure of nats.go#1777 and nats.c#988. It runs on
// kvconfig.Watcher, the one KV-watcher implementation, on the client's
// current connection.
type KVWatch struct {
	c       *Client
	bucket  string
	handler KVHandler
	log     zerolog.Logger
	w       *kvconfig.Watcher
	cancel  context.CancelFunc
	once    sync.Once
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
	kw := &KVWatch{c: c, bucket: bucket, handler: handler, log: c.log.With().Str(logKeyBucket, bucket).Logger()}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return nil, ErrClosed
	}
	w, err := kvconfig.StartWatcher(kvconfig.WatcherConfig{
		Bucket:    bucket,
		Keys:      keys,
		JetStream: kw.jetStream,
		Handle:    kw.call,
		Reset: func() {
			kw.log.Warn().Msg("agentproto: KV bucket re-created; delivering it again from its first revision")
		},
		Restarted:      kw.restarted,
		CheckInterval:  c.cfg.KVCheckInterval,
		RequestTimeout: c.cfg.RequestTimeout,
		RetryDelay: func(n int) time.Duration {
			return ReconnectDelay(n, c.cfg.ReconnectWait, kvRetryMax, c.cfg.jitter(), rand.Float64())
		},
		Logger: &kw.log,
	})
	if err != nil {
		return nil, fmt.Errorf("agentproto: watch %s: %w", bucket, err)
	}
	kw.w = w
	var ctx context.Context
	ctx, kw.cancel = context.WithCancel(c.ctx)
	c.kvs[kw] = struct{}{}
	c.goFn(func() { // the client's Close waits for the watcher through this
		<-ctx.Done()
		w.Close()
	})
	return kw, nil
}

// Revision is the last revision delivered to the handler.
func (w *KVWatch) Revision() uint64 { return w.w.Revision() }

// Restarts counts re-creations of the underlying watcher.
func (w *KVWatch) Restarts() uint64 { return w.w.Restarts() }

// Stop stops the watcher and waits for it. Safe to call twice; not from
// the watcher's own handler.
func (w *KVWatch) Stop() {
	w.c.mu.Lock()
	delete(w.c.kvs, w)
	w.c.mu.Unlock()
	w.once.Do(w.cancel)
	w.w.Close()
}

// restart re-creates the watcher from its last revision on the current
// connection.
func (w *KVWatch) restart() { w.w.Restart("reconnected or rebuilt") }

// jetStream is the client's current connection's JetStream.
func (w *KVWatch) jetStream() (jetstream.JetStream, error) {
	nc, _ := w.c.conn()
	if nc == nil {
		return nil, ErrNoConnection
	}
	return jetstream.New(nc)
}

func (w *KVWatch) restarted(reason string) {
	w.c.emit(Event{Kind: EventKVRestarted, Subject: w.bucket, Reason: reason})
}

// call runs the handler, recovering a panic.
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

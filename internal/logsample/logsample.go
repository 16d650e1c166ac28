// Package logsample bounds log lines that outside traffic can cause (a
// request, a heartbeat): a Sampler lets a burst of lines per period through
// and counts the rest, and a Reporter writes one summary line per sampler
// and period saying how many were dropped, so a flood costs a fixed number
// of lines per second however large it is, and is still visible.
package logsample

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Sampler is a zerolog.Sampler that passes at most Burst lines per Period
// (any level) and counts the lines it drops.
type Sampler struct {
	name    string
	burst   uint32
	period  int64 // ns
	mu      sync.Mutex
	start   int64 // ns, the current period's start
	passed  uint32
	dropped atomic.Uint64
	now     func() int64
}

// New returns a sampler named name (the summary line's "lines" field)
// passing burst lines per period.
func New(name string, burst uint32, period time.Duration) *Sampler {
	return &Sampler{name: name, burst: burst, period: int64(period), now: func() int64 { return time.Now().UnixNano() }}
}

// Sample implements zerolog.Sampler.
func (s *Sampler) Sample(zerolog.Level) bool {
	now := s.now()
	s.mu.Lock()
	if now-s.start >= s.period {
		s.start, s.passed = now, 0
	}
	ok := s.passed < s.burst
	if ok {
		s.passed++
	}
	s.mu.Unlock()
	if !ok {
		s.dropped.Add(1)
	}
	return ok
}

// Logger is log sampled by s.
func (s *Sampler) Logger(log zerolog.Logger) zerolog.Logger { return log.Sample(s) }

// Dropped is the number of lines dropped since the last Report.
func (s *Sampler) Dropped() uint64 { return s.dropped.Load() }

// Report writes one warning naming how many lines s dropped since the last
// report, if any, and resets the count.
func (s *Sampler) Report(log zerolog.Logger, since time.Duration) {
	if n := s.dropped.Swap(0); n > 0 {
		log.Warn().Str("lines", s.name).Uint64("dropped", n).Dur("over_ms", since).
			Msg("log lines dropped by sampling (a flood of requests or heartbeats); metrics count every one")
	}
}

// Reporter reports a set of samplers every period until Close.
type Reporter struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// Start reports samplers on log every period, and once more at Close.
func Start(log zerolog.Logger, every time.Duration, samplers ...*Sampler) *Reporter {
	r := &Reporter{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		last := time.Now()
		report := func() {
			since := time.Since(last)
			last = time.Now()
			for _, s := range samplers {
				s.Report(log, since)
			}
		}
		for {
			select {
			case <-r.stop:
				report()
				return
			case <-tk.C:
				report()
			}
		}
	}()
	return r
}

// Close stops the reporter after a last report and waits for it. Safe to
// call twice.
func (r *Reporter) Close() {
	r.once.Do(func() { close(r.stop) })
	<-r.done
}

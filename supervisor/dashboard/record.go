package dashboard

import (
	"context"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// Source is what the dashboard reads of the fleet: every agent id
// (sorted), one agent's status and pending commands, and the fleet-wide
// flags (mass silence, whether this replica commands). The dashboard only
// reads; it never changes the tracker.
type Source interface {
	AgentIDs() []string
	Agent(id string) (fleet.AgentStatus, bool)
	Pending(id string) []agentproto.Command
	MassSilence() bool
	Leader() bool
	// Leadership is the lease holder's replica id and how long no replica
	// has held the lease (zero while one does).
	Leadership() (holder string, noLeader time.Duration)
	// InvalidEntries are up to n malformed operator entries (mcp_configs
	// values and keys, mcp_agents records), as fleet.status lists them.
	InvalidEntries(n int) []fleet.InvalidEntry
	// UnconfiguredRoles are up to n roles that agents in mcp_agents have
	// but no config names.
	UnconfiguredRoles(n int) []kvconfig.RoleUse
}

// FromFleet is the Source of a supervisor's fleet: f returns it, or nil
// while there is none (then the dashboard shows an empty fleet).
func FromFleet(f func() *fleet.Fleet) Source { return fleetView{f} }

// fleetView adapts a *fleet.Fleet that may not exist yet to Source.
type fleetView struct{ f func() *fleet.Fleet }

func (v fleetView) AgentIDs() []string {
	if f := v.f(); f != nil {
		return f.AgentIDs()
	}
	return nil
}

func (v fleetView) Agent(id string) (fleet.AgentStatus, bool) {
	if f := v.f(); f != nil {
		return f.Agent(id)
	}
	return fleet.AgentStatus{}, false
}

func (v fleetView) Pending(id string) []agentproto.Command {
	if f := v.f(); f != nil {
		return f.Pending(id)
	}
	return nil
}

func (v fleetView) MassSilence() bool {
	f := v.f()
	return f != nil && f.MassSilence()
}

func (v fleetView) Leader() bool {
	f := v.f()
	return f != nil && f.Leader()
}

func (v fleetView) Leadership() (string, time.Duration) {
	if f := v.f(); f != nil {
		return f.Leadership()
	}
	return "", 0
}

func (v fleetView) InvalidEntries(n int) []fleet.InvalidEntry {
	if f := v.f(); f != nil {
		return f.InvalidEntries(n)
	}
	return nil
}

func (v fleetView) UnconfiguredRoles(n int) []kvconfig.RoleUse {
	if f := v.f(); f != nil {
		return f.UnconfiguredRoles(n)
	}
	return nil
}

// stateEvent is one state change seen between two samples. From is "" when
// the agent joined; To is "" when the supervisor forgot it.
type stateEvent struct {
	Seq    uint64 `json:"seq"`
	T      int64  `json:"t"` // unix ms
	Agent  string `json:"agent"`
	Role   string `json:"role,omitempty"`
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason,omitempty"`
}

// latencySample is one point of the timeline: fleet counts, the state
// changes since the last sample and the heartbeat RTTs agents report.
type latencySample struct {
	Seq     uint64         `json:"seq"`
	T       int64          `json:"t"` // unix ms
	Counts  map[string]int `json:"counts"`
	Changes map[string]int `json:"changes,omitempty"` // changes into each state
	// Live is the agents with an RTT (healthy, suspect, zombie).
	Live   int     `json:"live"`
	RTTP50 float64 `json:"rtt_p50_ms"`
	RTTP99 float64 `json:"rtt_p99_ms"`
	RTTMax float64 `json:"rtt_max_ms"`
	// AgeP99 is the 99th percentile of live agents' heartbeat age.
	AgeP99 int64 `json:"age_p99_ms"`
}

// fleetSnap is the fleet as one sample saw it. Immutable once published.
type fleetSnap struct {
	seq    uint64
	at     time.Time
	rows   []agentRow // sorted by agent id
	bySev  []int32    // row indices, worst state first, then by id
	counts map[string]int
	total  int
	roles  []string
	mass   bool
	leader bool
	holder string
	// noLeader is how long no replica has held the lease.
	noLeader time.Duration
	// notices is the JSON of what the fleet page shows above the table
	// (invalid entries, roles no config names), sent when it changes.
	notices []byte
}

// recorder samples the fleet every interval, diffs states into events and
// keeps bounded rings of events and samples. Close stops it and waits.
type recorder struct {
	cfg Config
	src Source
	now func() time.Time

	mu      sync.Mutex
	snap    *fleetSnap
	events  ring[stateEvent]
	samples ring[latencySample]
	evSeq   uint64
	tick    chan struct{} // closed and replaced at every sample

	rtts   []float64 // scratch, loop goroutine only
	ages   []int64
	rates  *rateKeeper // loop goroutine only
	t0     time.Time   // the first sample's time
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

func newRecorder(cfg Config, src Source) *recorder {
	if cfg.RateWindow <= 0 {
		cfg.RateWindow = DefaultRateWindow
	}
	return &recorder{cfg: cfg, src: src, now: time.Now, tick: make(chan struct{}), rates: newRateKeeper(cfg.RateWindow),
		snap:    &fleetSnap{counts: emptyCounts()},
		events:  newRing[stateEvent](cfg.MaxEvents),
		samples: newRing[latencySample](cfg.MaxSamples)}
}

// maxSampleShare bounds the time the recorder may spend sampling: after a
// sample that took d, the next waits at least d/maxSampleShare (a huge
// fleet on a short interval is sampled less often, never back to back).
const maxSampleShare = 0.1

// start samples once before it returns, so no stream or API reply ever
// shows the empty picture of before the first sample, then every interval.
func (r *recorder) start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	began := time.Now()
	r.sample()
	wait := r.nextWait(time.Since(began))
	r.wg.Go(func() {
		tm := time.NewTimer(wait)
		defer tm.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tm.C:
			}
			began := time.Now()
			r.sample()
			tm.Reset(r.nextWait(time.Since(began)))
		}
	})
}

// nextWait is the wait after a sample that took took: the interval, or
// longer when sampling is slow (see maxSampleShare).
func (r *recorder) nextWait(took time.Duration) time.Duration {
	return max(r.cfg.Interval, time.Duration(float64(took)/maxSampleShare)) - took
}

// Close stops sampling and waits; safe to call twice and before start.
func (r *recorder) Close() {
	r.once.Do(func() {
		if r.cancel != nil {
			r.cancel()
		}
		r.wg.Wait()
	})
}

// current returns the latest snapshot and a channel closed at the next one.
func (r *recorder) current() (*fleetSnap, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snap, r.tick
}

// sample reads every agent, diffs against the last snapshot and publishes.
func (r *recorder) sample() {
	now := r.now()
	ids := r.src.AgentIDs()
	rows := make([]agentRow, 0, len(ids))
	for _, id := range ids {
		if st, ok := r.src.Agent(id); ok {
			rows = append(rows, makeRow(st))
		}
	}
	r.mu.Lock()
	prev := r.snap
	r.mu.Unlock()
	first := prev.seq == 0
	if first {
		r.t0 = now
	}
	r.recentFailures(rows, now.Sub(r.t0), prev.seq+1)
	snap := &fleetSnap{seq: prev.seq + 1, at: now, rows: rows, counts: emptyCounts(),
		mass: r.src.MassSilence(), leader: r.src.Leader(), notices: sampleNotices(r.src)}
	snap.holder, snap.noLeader = r.src.Leadership()
	snap.bySev = bySeverity(rows)
	roles := map[string]struct{}{}
	r.rtts, r.ages = r.rtts[:0], r.ages[:0]
	for i := range rows {
		row := &rows[i]
		snap.counts[row.State]++
		if row.Role != "" {
			roles[row.Role] = struct{}{}
		}
		switch row.State {
		case "healthy", "suspect", "zombie":
			if row.RTT > 0 {
				r.rtts = append(r.rtts, row.RTT)
			}
			if row.HeardMS >= 0 {
				r.ages = append(r.ages, row.HeardMS)
			}
		}
	}
	snap.total = len(rows)
	for role := range roles {
		snap.roles = append(snap.roles, role)
	}
	sort.Strings(snap.roles)

	var evs []stateEvent
	if !first {
		evs = diffRows(prev.rows, rows, now.UnixMilli())
	}
	smp := latencySample{T: now.UnixMilli(), Counts: snap.counts, Live: len(r.rtts)}
	slices.Sort(r.rtts)
	slices.Sort(r.ages)
	smp.RTTP50, smp.RTTP99 = round2(quantile(r.rtts, 0.5)), round2(quantile(r.rtts, 0.99))
	if n := len(r.rtts); n > 0 {
		smp.RTTMax = round2(r.rtts[n-1])
	}
	if n := len(r.ages); n > 0 {
		smp.AgeP99 = r.ages[rank(n, 0.99)]
	}
	for _, e := range evs {
		if e.To != "" {
			if smp.Changes == nil {
				smp.Changes = map[string]int{}
			}
			smp.Changes[e.To]++
		}
	}

	r.mu.Lock()
	for i := range evs {
		r.evSeq++
		evs[i].Seq = r.evSeq
		r.events.push(evs[i])
	}
	smp.Seq = snap.seq
	r.samples.push(smp)
	r.snap = snap
	close(r.tick)
	r.tick = make(chan struct{})
	r.mu.Unlock()
}

// recentFailures fills every row's recent failures from the counters it
// reports at (since the first sample) in sample seq.
func (r *recorder) recentFailures(rows []agentRow, at time.Duration, seq uint64) {
	for i := range rows {
		row := &rows[i]
		d := r.rates.observe(row.ID, failCounts{row.Retried, row.Failed, row.Reconnects}, at, seq)
		if !d.zero() {
			row.Recent = &recentCounts{Retried: d.retried, Failed: d.failed, Reconnects: d.reconnects}
		}
	}
	r.rates.forget(seq, len(rows))
}

// diffRows merges two id-sorted row lists into state-change events.
func diffRows(prev, cur []agentRow, t int64) []stateEvent {
	var evs []stateEvent
	i, j := 0, 0
	for i < len(prev) || j < len(cur) {
		switch {
		case j == len(cur) || i < len(prev) && prev[i].ID < cur[j].ID:
			p := &prev[i]
			evs = append(evs, stateEvent{T: t, Agent: p.ID, Role: p.Role, From: p.State, Reason: "forgotten by the supervisor"})
			i++
		case i == len(prev) || cur[j].ID < prev[i].ID:
			c := &cur[j]
			evs = append(evs, stateEvent{T: t, Agent: c.ID, Role: c.Role, To: c.State, Reason: c.Reason})
			j++
		default:
			p, c := &prev[i], &cur[j]
			if p.State != c.State {
				evs = append(evs, stateEvent{T: t, Agent: c.ID, Role: c.Role, From: p.State, To: c.State, Reason: c.Reason})
			}
			i++
			j++
		}
	}
	return evs
}

// eventsSince returns the events after seq matching keep, at most limit
// (the latest), and the last event seq recorded. missed reports that events
// after seq already left the ring.
func (r *recorder) eventsSince(seq uint64, limit int, keep func(*stateEvent) bool) (out []stateEvent, dropped int, last uint64, missed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.events.len()
	if n > 0 && seq+1 < r.events.at(0).Seq {
		missed = seq != 0
	}
	for i := 0; i < n; i++ {
		e := r.events.at(i)
		if e.Seq > seq && (keep == nil || keep(e)) {
			out = append(out, *e)
		}
	}
	if len(out) > limit {
		dropped = len(out) - limit
		out = out[dropped:]
	}
	return out, dropped, r.evSeq, missed
}

// samplesSince returns the samples after seq; missed reports that some
// already left the ring.
func (r *recorder) samplesSince(seq uint64) (out []latencySample, missed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.samples.len()
	if n > 0 && seq != 0 && seq+1 < r.samples.at(0).Seq {
		missed = true
	}
	for i := 0; i < n; i++ {
		if s := r.samples.at(i); s.Seq > seq {
			out = append(out, *s)
		}
	}
	return out, missed
}

// severity orders states worst first for the default sort: what needs a
// human, then what is broken, then what is late, then the rest.
func severity(state string) int {
	switch state {
	case "quarantined":
		return 0
	case "zombie":
		return 1
	case "lost":
		return 2
	case "suspect":
		return 3
	case "healthy":
		return 5
	case "gone":
		return 6
	}
	return 4
}

// bySeverity is a counting sort of row indices by severity, ids ascending
// within one severity (rows are sorted by id).
func bySeverity(rows []agentRow) []int32 {
	var buckets [7][]int32
	for i := range rows {
		s := severity(rows[i].State)
		buckets[s] = append(buckets[s], int32(i))
	}
	out := make([]int32, 0, len(rows))
	for _, b := range buckets {
		out = append(out, b...)
	}
	return out
}

func emptyCounts() map[string]int {
	m := map[string]int{}
	for _, s := range fleet.States() {
		m[s.String()] = 0
	}
	return m
}

// quantile of sorted values (nearest rank); 0 when empty.
func quantile(sorted []float64, q float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	return sorted[rank(n, q)]
}

// rank is the nearest-rank index of quantile q among n > 0 sorted values.
func rank(n int, q float64) int {
	return min(max(int(math.Ceil(q*float64(n)))-1, 0), n-1)
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }

// ring is a bounded FIFO that overwrites its oldest element.
type ring[T any] struct {
	buf  []T
	head int // index of the oldest element
	n    int
}

func newRing[T any](capacity int) ring[T] { return ring[T]{buf: make([]T, max(capacity, 1))} }

func (r *ring[T]) push(v T) {
	if r.n < len(r.buf) {
		r.buf[(r.head+r.n)%len(r.buf)] = v
		r.n++
		return
	}
	r.buf[r.head] = v
	r.head = (r.head + 1) % len(r.buf)
}

func (r *ring[T]) len() int { return r.n }

// at is the i-th oldest element.
func (r *ring[T]) at(i int) *T { return &r.buf[(r.head+i)%len(r.buf)] }

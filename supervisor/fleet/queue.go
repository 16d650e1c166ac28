package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// Queue zombies: an agent heartbeats, answers probes, looks healthy, and
// yet its task queue piles up because nothing is acknowledged (a wedged
// handler, a pull path that stopped). Heartbeats declare the durable
// consumers an agent consumes; the leader reads their consumer info on
// its sweep, at most QueueInfoRate requests a second fleet-wide and
// QueueInfoBatch a round, each consumer at most once per its agent's
// interval. An agent whose consumer has messages pending or unacknowledged
// while its ack floor has not moved for QueueZombieAfter of its intervals
// is a queue zombie: it is shown as zombie (queue_zombie set) and gets the
// zombie recovery path — a reconnect command, paced by the recovery rate,
// counted by the restart intensity, so one that stays stuck is
// quarantined rather than looped.

// Queue states of a declared consumer (QueueStatus.State and the state
// label of tether_queue_consumers).
const (
	QueueUnknown = "unknown" // not read yet, or its info cannot be read (Error says why)
	QueueIdle    = "idle"    // nothing pending or unacknowledged
	QueueBusy    = "busy"    // a backlog, and the ack floor moves
	QueueStalled = "stalled" // a backlog, and the ack floor has not moved for an interval or more
)

var queueStates = []string{QueueUnknown, QueueIdle, QueueBusy, QueueStalled}

// consumerIn is one declared consumer of a heartbeat
// (agentproto.ConsumerStatus).
type consumerIn struct {
	Stream       string  `json:"stream"`
	Durable      string  `json:"durable"`
	Handled      uint64  `json:"handled"`
	Acked        uint64  `json:"acked"`
	Naked        uint64  `json:"naked"`
	InFlight     uint64  `json:"in_flight"`
	LastAckMSAgo *uint64 `json:"last_ack_ms_ago"`
}

// queueRec is a declared consumer: what the agent says and, read by the
// leader, what the server says. Guarded by the agent's shard lock.
type queueRec struct {
	decl       consumerIn
	read       bool
	readAt     int64 // monotonic
	err        string
	pending    uint64
	ackPending uint64
	redeliv    uint64
	ackFloor   uint64 // stream sequence
	delivered  uint64
	lastAck    time.Time // the server's last ack of this consumer
	lastDeliv  time.Time
	progressAt int64 // monotonic: the ack floor last moved, or the backlog was empty
	episodeAt  int64 // monotonic: the last queue zombie episode it caused
	readAt0    int64 // monotonic: the last successful read (0: none yet)
}

// progressTime places an ack floor move seen at read now (monotonic; the
// previous successful read was at prev, 0 for none): at the server's
// last-ack time (lastAck, on the server's wall clock; wall is the
// supervisor's now), clamped into (prev, now] so a skewed server clock can
// misplace it by at most one read period.
func progressTime(prev, now int64, wall, lastAck time.Time) int64 {
	if lastAck.IsZero() || prev == 0 {
		return now
	}
	at := now - int64(wall.Sub(lastAck))
	return min(max(at, prev), now)
}

func (r *queueRec) backlog() uint64 { return r.pending + r.ackPending }

// state is the record's queue state at now, for an agent beating at interval.
func (r *queueRec) state(now int64, interval time.Duration) string {
	switch {
	case !r.read || r.err != "":
		return QueueUnknown
	case r.backlog() == 0:
		return QueueIdle
	case now-r.progressAt >= int64(interval):
		return QueueStalled
	}
	return QueueBusy
}

// queueStalled reports whether a backlog has gone without ack progress
// for after intervals: the queue zombie rule, a pure function.
func queueStalled(backlog uint64, progressAt, now int64, interval time.Duration, after int) bool {
	return backlog > 0 && after > 0 && now-progressAt >= int64(after)*int64(interval)
}

// updateQueues takes the declared consumers of a heartbeat, keeping what
// was read for those still declared; the shard lock is held.
func updateQueues(a *agent, decl []consumerIn) {
	if len(decl) == 0 {
		if a.queues() != nil {
			a.rare.queues, a.qzombie = nil, false
			a.dirty |= dirtyOther
		}
		return
	}
	cur := a.queues()
	if len(decl) == len(cur) {
		same := true
		for i := range decl {
			if decl[i].Stream != cur[i].decl.Stream || decl[i].Durable != cur[i].decl.Durable {
				same = false
				break
			}
		}
		if same {
			for i := range decl {
				cur[i].decl = decl[i]
			}
			return
		}
	}
	next := make([]queueRec, len(decl))
	for i, d := range decl {
		next[i].decl = d
		for _, old := range cur {
			if old.decl.Stream == d.Stream && old.decl.Durable == d.Durable {
				old.decl = d
				next[i] = old
				break
			}
		}
	}
	a.more().queues = next
	a.dirty |= dirtyOther
}

// queueState is owned by the queue checker goroutine.
type queueState struct {
	bucket *tokenBucket
	next   int // the shard the next round starts at
	due    []queueRead
}

// queueRead is one consumer info to read, and what came back.
type queueRead struct {
	agent, stream, durable string
	info                   jsConsumerInfo
	err                    error
}

// jsConsumerInfo is the part of $JS.API.CONSUMER.INFO's answer read.
type jsConsumerInfo struct {
	Delivered      jsSeqInfo `json:"delivered"`
	AckFloor       jsSeqInfo `json:"ack_floor"`
	NumAckPending  uint64    `json:"num_ack_pending"`
	NumRedelivered uint64    `json:"num_redelivered"`
	NumPending     uint64    `json:"num_pending"`
	Error          *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

type jsSeqInfo struct {
	Stream uint64     `json:"stream_seq"`
	Last   *time.Time `json:"last_active"`
}

// checkQueues is one round of the queue checker (leader only): pick the
// declared consumers due for a read within the rate, read their info
// concurrently, judge them.
func (f *Fleet) checkQueues() {
	t := f.t
	if !t.cmd.Leader() || t.linkDown.Load() || t.behind.Load() {
		return
	}
	q := &f.queue
	if q.bucket == nil {
		q.bucket = newTokenBucket(f.cfg.QueueInfoRate, f.cfg.QueueInfoBatch, t.now())
	}
	now := t.now()
	q.due = q.due[:0]
	gauges := t.pickQueues(q, now, f.cfg.QueueInfoBatch)
	f.readQueues(q.due)
	for i := range q.due {
		t.applyQueue(&q.due[i], t.now())
	}
	f.t.metrics.queueGauges(gauges)
}

// queueCounts are the tether_queue_* gauges of one round.
type queueCounts struct {
	zombies int
	states  map[string]int
	backlog uint64
}

// pickQueues collects up to batch consumers due for a read, round-robin
// over the shards, within the rate; it counts the gauges on the way.
func (t *tracker) pickQueues(q *queueState, now int64, batch int) queueCounts {
	g := queueCounts{states: make(map[string]int, len(queueStates))}
	for _, s := range queueStates {
		g.states[s] = 0
	}
	ix := t.index.Load()
	var ungranted []queueRead
	var judged []queueEvent
	start := q.next
	for n := range numShards {
		i := (start + n) % numShards
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, a := range sh.list {
			if a.qzombie {
				g.zombies++
			}
			qs := a.queues()
			if len(qs) == 0 {
				continue // most agents: nothing to read or count
			}
			iv := effectiveInterval(t.cfg.HeartbeatInterval, a.intervalMS)
			for j := range qs {
				r := &qs[j]
				if newly, skip := ungrantedQueue(ix, a, r); skip {
					g.states[QueueUnknown]++
					if newly {
						ungranted = append(ungranted, queueRead{agent: a.id, stream: r.decl.Stream, durable: r.decl.Durable})
						if a.qzombie { // it may have been the stuck one: judge again
							judged = append(judged, t.judgeQueues(a, now))
						}
					}
					continue
				}
				g.states[r.state(now, iv)]++
				g.backlog += r.backlog()
				if a.live != StateHealthy && a.live != StateSuspect || r.read && now-r.readAt < int64(iv) {
					continue
				}
				if len(q.due) < batch && q.bucket.take(now) {
					q.due = append(q.due, queueRead{agent: a.id, stream: r.decl.Stream, durable: r.decl.Durable})
					if len(q.due) == batch {
						q.next = i
					}
				}
			}
		}
		sh.mu.Unlock()
	}
	t.reportUngranted(ungranted)
	for _, ev := range judged {
		ev.log(t)
	}
	return g
}

// readQueues reads every consumer info of due at once, each bounded by
// QueueInfoTimeout; it returns when all are back.
func (f *Fleet) readQueues(due []queueRead) {
	var wg sync.WaitGroup
	for i := range due {
		r := &due[i]
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), f.cfg.QueueInfoTimeout)
			defer cancel()
			m, err := f.nc.RequestWithContext(ctx, "$JS.API.CONSUMER.INFO."+r.stream+"."+r.durable, nil)
			if err == nil {
				err = json.Unmarshal(m.Data, &r.info)
			}
			if err == nil && r.info.Error != nil {
				err = errors.New(kvconfig.Truncate(r.info.Error.Description, 200) + " (JetStream error " + strconv.Itoa(r.info.Error.ErrCode) + ")")
			}
			r.err = err
			f.t.metrics.queueRead(err == nil)
		})
	}
	wg.Wait()
}

// applyQueue records one read and judges the agent.
func (t *tracker) applyQueue(rd *queueRead, now int64) {
	sh := t.shard(rd.agent)
	sh.mu.Lock()
	a := sh.m[rd.agent]
	var r *queueRec
	if a != nil {
		qs := a.queues()
		for j := range qs {
			if qs[j].decl.Stream == rd.stream && qs[j].decl.Durable == rd.durable {
				r = &qs[j]
			}
		}
	}
	if r == nil {
		sh.mu.Unlock()
		return // no longer declared
	}
	r.readAt = now
	if rd.err != nil {
		r.readAt0 = 0
		r.err = rd.err.Error()
		sh.mu.Unlock()
		t.warn.Warn().Str("agent", rd.agent).Str("stream", rd.stream).Str("durable", rd.durable).Err(rd.err).
			Msg("declared consumer's info cannot be read (does it exist? the supervisor needs $JS.API.CONSUMER.INFO)")
		return
	}
	in := &rd.info
	moved := !r.read || r.err != "" || in.AckFloor.Stream != r.ackFloor
	r.read, r.err = true, ""
	r.pending, r.ackPending, r.redeliv = in.NumPending, in.NumAckPending, in.NumRedelivered
	r.ackFloor, r.delivered = in.AckFloor.Stream, in.Delivered.Stream
	r.lastAck, r.lastDeliv = timeOrZero(in.AckFloor.Last), timeOrZero(in.Delivered.Last)
	switch {
	case r.backlog() == 0:
		r.progressAt = now
	case moved:
		r.progressAt = progressTime(r.readAt0, now, t.clock.Now(), r.lastAck)
	}
	r.readAt0 = now
	ev := t.judgeQueues(a, now)
	sh.mu.Unlock()
	ev.log(t)
}

func timeOrZero(p *time.Time) time.Time {
	if p == nil {
		return time.Time{}
	}
	return p.UTC()
}

// queueEvent is what judging an agent's queues decided, logged outside the lock.
type queueEvent struct {
	agent, why          string
	zombie, recovered   bool
	quarantined, queued bool
	stalledFor          time.Duration
}

func (e queueEvent) log(t *tracker) {
	switch {
	case e.quarantined:
		t.change.Error().Str("agent", e.agent).Str("reason", e.why).
			Msg("agent quarantined: restart intensity exceeded; no more recovery commands until it settles")
	case e.zombie && e.queued:
		t.change.Warn().Str("agent", e.agent).Str("reason", e.why).Int64("stalled_ms", e.stalledFor.Milliseconds()).
			Msg("queue zombie: its queue piles up with no ack while it heartbeats; reconnect queued")
	case e.zombie:
		t.change.Info().Str("agent", e.agent).Str("reason", e.why).Int64("stalled_ms", e.stalledFor.Milliseconds()).
			Msg("queue zombie still stuck; a reconnect is already pending or it is quarantined")
	case e.recovered:
		t.change.Info().Str("agent", e.agent).Msg("queue zombie over: its ack floor moves again")
	}
}

// judgeQueues applies the queue zombie rule to an agent; the shard lock
// is held. Every episode needs QueueZombieAfter fresh intervals without
// progress, and each counts towards the restart intensity.
func (t *tracker) judgeQueues(a *agent, now int64) queueEvent {
	ev := queueEvent{agent: a.id}
	iv := effectiveInterval(t.cfg.HeartbeatInterval, a.intervalMS)
	stuck := false
	qs := a.queues()
	for j := range qs {
		r := &qs[j]
		if !r.read || r.err != "" || !queueStalled(r.backlog(), r.progressAt, now, iv, 1) {
			continue
		}
		stuck = true
		if a.live != StateHealthy || !queueStalled(r.backlog(), max(r.progressAt, r.episodeAt), now, iv, t.cfg.QueueZombieAfter) {
			continue
		}
		ev.stalledFor = time.Duration(now - r.progressAt)
		r.episodeAt = now // a further episode needs fresh intervals
		ev.why = "queue zombie: " + r.decl.Stream + "/" + r.decl.Durable + " has " + strconv.FormatUint(r.pending, 10) +
			" pending and " + strconv.FormatUint(r.ackPending, 10) + " unacknowledged, no ack for " +
			ev.stalledFor.Round(time.Millisecond).String() + ", while the agent heartbeats"
		ev.quarantined, ev.queued = t.queueEpisode(a, now, ev.why)
		ev.zombie = true
		return ev
	}
	if !stuck && a.qzombie {
		a.qzombie, ev.recovered = false, true
		a.dirty |= dirtyOther
	}
	return ev
}

// queueEpisode marks a queue zombie and queues its reconnect (unless one
// is pending or it is quarantined), as zombieEpisode does; it reports
// whether the agent was just quarantined and whether a reconnect was
// queued.
func (t *tracker) queueEpisode(a *agent, now int64, why string) (quarantined, queued bool) {
	if a.quarantined {
		return false, false // it stays stuck: its state says so, nothing more is sent
	}
	a.qzombie = true
	a.setReason(why)
	a.dirty |= dirtyOther
	if t.noteRecovery(a, now, why) {
		return true, false
	}
	for _, p := range a.pending() {
		if p.cmd.Type == agentproto.CmdReconnect {
			return false, false
		}
	}
	t.addPending(a, agentproto.Command{Type: agentproto.CmdReconnect, Reason: why}, true, now)
	t.enqueueRecovery(a.id)
	return false, true
}

// QueueStatus is one declared consumer in fleet.status: what the agent
// reports, what the server reports (read by the leader), and its state.
type QueueStatus struct {
	Stream  string `json:"stream"`
	Durable string `json:"durable"`
	State   string `json:"state"`
	// From the agent's heartbeat.
	Handled      uint64  `json:"handled"`
	Acked        uint64  `json:"acked"`
	Naked        uint64  `json:"naked"`
	InFlight     uint64  `json:"in_flight"`
	LastAckMSAgo *uint64 `json:"last_ack_ms_ago,omitempty"`
	// From the consumer info: not yet delivered, delivered and not
	// acknowledged, redelivered; the ack floor and last delivered stream
	// sequences and when the server last saw each move.
	NumPending     uint64    `json:"num_pending"`
	NumAckPending  uint64    `json:"num_ack_pending"`
	NumRedelivered uint64    `json:"num_redelivered,omitempty"`
	AckFloorSeq    uint64    `json:"ack_floor_seq"`
	DeliveredSeq   uint64    `json:"delivered_seq"`
	LastAcked      time.Time `json:"last_acked,omitzero"`
	LastDelivered  time.Time `json:"last_delivered,omitzero"`
	// StalledMS is how long the backlog has gone without the ack floor
	// moving (0 when it moves or is empty); CheckedMSAgo when it was read.
	StalledMS    int64  `json:"stalled_ms,omitempty"`
	CheckedMSAgo int64  `json:"checked_ms_ago,omitempty"`
	Error        string `json:"error,omitempty"`
}

// queueSnapshot fills the queue part of an agent's status; the shard lock
// is held.
func (t *tracker) queueSnapshot(a *agent, now int64, st *AgentStatus) {
	st.QueueZombie = a.qzombie
	recs := a.queues()
	if len(recs) == 0 {
		return
	}
	iv := effectiveInterval(t.cfg.HeartbeatInterval, a.intervalMS)
	st.Consumers = make([]QueueStatus, len(recs))
	for i := range recs {
		r := &recs[i]
		qs := QueueStatus{Stream: r.decl.Stream, Durable: r.decl.Durable, State: r.state(now, iv),
			Handled: r.decl.Handled, Acked: r.decl.Acked, Naked: r.decl.Naked, InFlight: r.decl.InFlight,
			LastAckMSAgo: r.decl.LastAckMSAgo, NumPending: r.pending, NumAckPending: r.ackPending,
			NumRedelivered: r.redeliv, AckFloorSeq: r.ackFloor, DeliveredSeq: r.delivered,
			LastAcked: r.lastAck, LastDelivered: r.lastDeliv, Error: r.err}
		if r.read {
			qs.CheckedMSAgo = time.Duration(now - r.readAt).Milliseconds()
			if r.backlog() > 0 {
				qs.StalledMS = time.Duration(now - r.progressAt).Milliseconds()
			}
		}
		st.Backlog += r.backlog()
		st.Consumers[i] = qs
	}
	st.Warnings = append(st.Warnings, ungrantedWarnings(a)...)
}

// queueMetrics are the tether_queue_* metrics.
type queueMetrics struct {
	zombies   prometheus.Gauge
	states    *prometheus.GaugeVec
	backlog   prometheus.Gauge
	requests  *prometheus.CounterVec
	ungranted prometheus.Counter
}

func newQueueMetrics(reg prometheus.Registerer) *queueMetrics {
	m := &queueMetrics{
		zombies: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tether_queue_zombies",
			Help: "Agents that heartbeat while a declared consumer's backlog has no ack progress (queue zombies)."}),
		states: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tether_queue_consumers",
			Help: "Declared consumers by queue state (unknown, idle, busy, stalled)."}, []string{"state"}),
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tether_queue_backlog",
			Help: "Messages pending or unacknowledged over every declared consumer, as last read."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_queue_info_requests_total",
			Help: "Consumer info requests of declared consumers, by result (ok, error)."}, []string{"result"}),
		ungranted: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_queue_ungranted_total",
			Help: "Declared consumers found not granted to their agent in mcp_agents (their info is never read)."}),
	}
	reg.MustRegister(m.zombies, m.states, m.backlog, m.requests, m.ungranted)
	return m
}

func (m *Metrics) queueGauges(g queueCounts) {
	if m == nil || m.queue == nil {
		return
	}
	m.queue.zombies.Set(float64(g.zombies))
	for s, n := range g.states {
		m.queue.states.WithLabelValues(s).Set(float64(n))
	}
	m.queue.backlog.Set(float64(g.backlog))
}

func (m *Metrics) queueRead(ok bool) {
	if m == nil || m.queue == nil {
		return
	}
	if ok {
		m.queue.requests.WithLabelValues("ok").Inc()
	} else {
		m.queue.requests.WithLabelValues("error").Inc()
	}
}

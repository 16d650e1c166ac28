package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// Record is the mcp_fleet value of one agent (key: the agent id): its
// status as fleet.status shows it, plus what a restarted supervisor needs
// to carry on — liveness, flags, recovery history and pending commands.
// It is written when the state, the pending commands, the instance or a
// flag changes, never per heartbeat.
type Record struct {
	AgentStatus
	PrevInstance string `json:"prev_instance,omitempty"`
	// Liveness is what silence alone says: healthy, suspect, lost or gone.
	Liveness    State `json:"liveness"`
	Zombie      bool  `json:"zombie,omitempty"`
	Quarantined bool  `json:"quarantined,omitempty"`
	Goodbye     bool  `json:"goodbye,omitempty"`
	// Established: heard over several intervals, so it counts for mass
	// silence (one-shot ids never do).
	Established bool `json:"established,omitempty"`
	// Trimmed: the record was over mcp_fleet's max value size, so its
	// configs and recovery times (and, if still over, its servers) were
	// left out.
	Trimmed bool `json:"trimmed,omitempty"`
	// RecoveryTimes are the recovery events within the quarantine period.
	RecoveryTimes []time.Time `json:"recovery_times,omitempty"`
	// PendingCommands are sent until the agent acks their id.
	PendingCommands []PendingCommand `json:"pending_commands,omitempty"`
	Updated         time.Time        `json:"updated"`

	rev uint64 // the mcp_fleet revision it was read at (not encoded)
}

// PendingCommand is a command waiting for the agent's ack.
type PendingCommand struct {
	agentproto.Command
	Created time.Time `json:"created"`
	Sends   uint32    `json:"sends,omitempty"`
	// Queued: a recovery command still waiting for the fleet-wide rate.
	Queued   bool `json:"queued,omitempty"`
	Recovery bool `json:"recovery,omitempty"`
}

// record builds an agent's Record; the shard lock is held.
func (t *tracker) record(a *agent, now int64, wall time.Time) Record {
	r := Record{AgentStatus: t.snapshot(a, now, wall), PrevInstance: a.prevInst(), Liveness: a.live,
		Zombie: a.zombie, Quarantined: a.quarantined, Goodbye: a.goodbye, Established: a.established, Updated: wall.UTC()}
	for _, ev := range a.recoveries() {
		r.RecoveryTimes = append(r.RecoveryTimes, wall.Add(time.Duration(ev-now)).UTC())
	}
	for _, p := range a.pending() {
		r.PendingCommands = append(r.PendingCommands, PendingCommand{Command: p.cmd,
			Created: time.Unix(0, p.created).UTC(), Sends: p.sends, Queued: p.queued, Recovery: p.recovery})
	}
	return r
}

// flushChunk bounds how many records one round of flush builds, encodes
// and has in flight at a time: after 100,000 agents join, flush writes
// them a chunk at a time instead of holding every encoded record (and its
// publish) at once, which set the supervisor's peak RSS.
const flushChunk = 512

// flush writes changed records to mcp_fleet (leader only; not during mass
// silence, when the broker is the suspect), flushChunk at a time. A failed
// write stays dirty.
func (t *tracker) flush() {
	if !t.cmd.Leader() || t.mass.Load() {
		return
	}
	recs := make([]Record, 0, flushChunk)
	for i := range t.shards {
		sh := &t.shards[i]
		for next := 0; next >= 0; {
			now, wall := t.times() // a chunk's records are as of when it is built
			sh.mu.Lock()
			recs, next = t.dirtyRecords(sh, next, recs, now, wall)
			sh.mu.Unlock()
			if len(recs) == flushChunk || next < 0 && i == len(t.shards)-1 {
				t.writeRecords(recs)
				recs = recs[:0]
			}
		}
	}
}

// dirtyRecords appends the records of sh's dirty agents from list index
// from on, until recs holds flushChunk; it returns where to go on, or -1
// when the shard is done. The shard lock is held.
func (t *tracker) dirtyRecords(sh *shard, from int, recs []Record, now int64, wall time.Time) ([]Record, int) {
	for j := from; j < len(sh.list); j++ {
		if len(recs) == flushChunk {
			return recs, j
		}
		a := sh.list[j]
		if a.dirty == 0 {
			continue
		}
		if a.dirty == dirtyState && a.state == a.persisted {
			a.dirty = 0 // flapped and came back: nothing to write
			continue
		}
		r := t.record(a, now, wall)
		r.rev = a.kvRev
		recs = append(recs, r)
		a.dirty, a.persisted = 0, a.state
	}
	return recs, -1
}

// writeRecords encodes and writes recs, and records each result on its
// agent: the new revision, or dirty again.
func (t *tracker) writeRecords(recs []Record) {
	if len(recs) == 0 {
		return
	}
	writes := make([]fleetWrite, 0, len(recs))
	for i := range recs {
		data, err := encodeRecord(&recs[i])
		if err != nil {
			t.warn.Error().Err(err).Str("agent", recs[i].Agent).Msg("cannot encode fleet record; not written")
			continue
		}
		writes = append(writes, fleetWrite{agent: recs[i].Agent, data: data, rev: recs[i].rev})
	}
	for _, w := range t.cmd.write(writes) {
		sh := t.shard(w.agent)
		sh.mu.Lock()
		if a := sh.m[w.agent]; a != nil {
			switch {
			case w.err == nil:
				a.kvRev = w.rev
			case w.current != 0 || errors.Is(w.err, errConflict):
				// Someone else wrote the record (a deposed leader's late
				// write): this leader's picture is written over it next round.
				a.kvRev = w.current
				a.dirty |= dirtyOther
			default:
				a.dirty |= dirtyOther
			}
		}
		sh.mu.Unlock()
	}
}

// encodeRecord encodes r within mcp_fleet's max value size: a record over
// it is written without its configs and recovery times (Trimmed), so that
// one agent's oversized picture never fails its writes.
func encodeRecord(r *Record) ([]byte, error) {
	data, err := json.Marshal(r)
	if err != nil || len(data) <= kvconfig.MaxFleetRecordBytes {
		return data, err
	}
	r.Configs, r.RecoveryTimes, r.Trimmed = nil, nil, true
	if data, err = json.Marshal(r); err != nil || len(data) <= kvconfig.MaxFleetRecordBytes {
		return data, err
	}
	r.Servers = nil // 256 servers' call health can fill a record too (mcp_failing stays)
	if data, err = json.Marshal(r); err != nil {
		return nil, err
	}
	if len(data) > kvconfig.MaxFleetRecordBytes {
		return nil, fmt.Errorf("record is %d bytes even without its configs and servers, over mcp_fleet's max value size %d", len(data), kvconfig.MaxFleetRecordBytes)
	}
	return data, nil
}

// load rebuilds the fleet picture from mcp_fleet. Silence of agents that
// were live is counted from the start of this supervisor (the grace set by
// the caller), so no one is declared lost before a full detection window.
func (t *tracker) load(ctx context.Context, kv jetstream.KeyValue) (int, error) {
	return t.readFleet(ctx, kv, t.restore)
}

// readFleetStall is how long a read of mcp_fleet may go without delivering
// anything before its watcher is taken for lost and the read starts over.
const readFleetStall = 3 * time.Second

// readFleetRetry is the pause before a failed read of mcp_fleet starts
// over: a read the server refuses at once (no stream, a consumer limit)
// must not spin.
const readFleetRetry = 250 * time.Millisecond

// readFleet calls fn for every readable record of mcp_fleet. A watcher whose
// creation or delivery was lost (a request written into a connection that
// was just dropped, a stream leader moving in a cluster) would otherwise
// stall the read until ctx ends, so a read that delivers nothing for
// readFleetStall starts over with a new watcher, and a failed one after
// readFleetRetry; records are applied only once a read is complete, so
// none is applied twice.
func (t *tracker) readFleet(ctx context.Context, kv jetstream.KeyValue, fn func(*Record)) (int, error) {
	for attempt := 1; ; attempt++ {
		recs, bad, err := readFleetOnce(ctx, kv)
		if err == nil {
			if bad > 0 {
				t.log.Warn().Int("unreadable", bad).Msg("some mcp_fleet records could not be read; those agents start afresh")
			}
			for i := range recs {
				fn(&recs[i])
			}
			return len(recs), nil
		}
		if ctx.Err() != nil {
			return 0, err
		}
		t.log.Warn().Err(err).Int("attempt", attempt).Msg("reading mcp_fleet failed; starting over with a new watcher")
		select {
		case <-ctx.Done():
			return 0, err
		case <-time.After(readFleetRetry):
		}
	}
}

// readFleetOnce reads every record with one watcher, or fails when it
// stalls for readFleetStall.
func readFleetOnce(ctx context.Context, kv jetstream.KeyValue) (recs []Record, bad int, err error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	created := time.AfterFunc(readFleetStall, cancel) // bounds the watcher's creation too
	w, err := kv.WatchAll(wctx, jetstream.IgnoreDeletes())
	if !created.Stop() && err == nil {
		kvconfig.StopWatcher(w)
		err = fmt.Errorf("not created within %v", readFleetStall)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("fleet: read %s: %w", kv.Bucket(), err)
	}
	defer kvconfig.StopWatcher(w)
	stall := time.NewTimer(readFleetStall)
	defer stall.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("fleet: read %s: %w", kv.Bucket(), ctx.Err())
		case <-stall.C:
			return nil, 0, fmt.Errorf("fleet: read %s: nothing delivered for %v", kv.Bucket(), readFleetStall)
		case e, ok := <-w.Updates():
			if !ok {
				return nil, 0, errors.New("fleet: read " + kv.Bucket() + ": watcher closed")
			}
			if e == nil {
				return recs, bad, nil
			}
			stall.Reset(readFleetStall)
			var r Record
			r.rev = e.Revision()
			if json.Unmarshal(e.Value(), &r) != nil || r.Agent != e.Key() || !kvconfig.ValidID(r.Agent) {
				bad++
				continue
			}
			recs = append(recs, r)
		}
	}
}

// restore adds one loaded record to the fleet.
func (t *tracker) restore(r *Record) {
	now, wall := t.times()
	mono := func(at time.Time) int64 { return now - int64(wall.Sub(at)) }
	a := &agent{id: r.Agent, instance: r.Instance, seq: r.Seq,
		live: r.Liveness, zombie: r.Zombie, quarantined: r.Quarantined, goodbye: r.Goodbye,
		duplicate: r.Duplicate, intervalMS: r.IntervalMS,
		conn: r.Conn, calls: r.Calls, skewMS: r.ClockSkewMS, skewed: r.ClockSkewed}
	if r.PrevInstance != "" || r.Restarts != 0 || r.Spoofed != 0 || r.Reason != "" {
		a.rare = &agentRare{prevInst: r.PrevInstance, restarts: r.Restarts, spoofed: r.Spoofed, reason: r.Reason}
	}
	if a.live < StateHealthy || a.live > StateGone {
		a.live = StateHealthy
	}
	if !r.LastHeard.IsZero() {
		a.heard, a.heardWall = mono(r.LastHeard), r.LastHeard.UnixNano()
	}
	if a.duplicate { // dupAt is read only while duplicate is set
		a.more().dupAt = now
	}
	t.restoreServers(a, r, now)
	for _, ev := range r.RecoveryTimes {
		a.more().recoveries = append(a.recoveries(), mono(ev))
	}
	for s, c := range r.Configs {
		if kvconfig.ValidID(s) {
			a.configs = append(a.configs, serverApplied{server: internSmall("", s),
				appliedConfig: appliedConfig{Revision: c.Revision, Applied: c.Applied, Error: c.Error, Stale: c.Stale}})
		}
	}
	// A gone agent is owed nothing (dropOwed); a record an older version
	// wrote may still list commands for one: written again without them.
	queued, dropped := false, a.live == StateGone && len(r.PendingCommands) > 0
	for _, p := range r.PendingCommands {
		if a.live == StateGone {
			break
		}
		a.more().pending = append(a.pending(), &pendingCmd{cmd: p.Command, created: p.Created.UnixNano(),
			sends: p.Sends, queued: p.Queued, recovery: p.Recovery})
		queued = queued || p.Queued
	}
	a.established, a.kvRev = r.Established, r.rev
	sh := t.shard(a.id)
	sh.mu.Lock()
	if old := sh.m[a.id]; old != nil {
		t.counts[old.state].Add(-1)
	} else if t.size.Load() >= int64(t.cfg.MaxAgents) {
		sh.mu.Unlock()
		t.refuse(DiscardFull, a.id)
		return
	} else {
		t.size.Add(1)
	}
	sh.add(a)
	t.setState(a, deriveState(a.live, a.zombie, a.quarantined), now)
	a.since, a.persisted, a.dirty = mono(r.Since), a.state, 0
	if dropped {
		a.dirty = dirtyOther
	}
	sh.mu.Unlock()
	t.idsGen.Add(1)
	if queued {
		t.enqueueRecovery(a.id)
	}
}

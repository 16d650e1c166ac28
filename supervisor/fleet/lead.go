package fleet

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// Reasons of reconciling re-resolves.
const (
	// reasonTakeover: a new leader's, for changes nobody pushed while no
	// replica led.
	reasonTakeover = "leader takeover: config changed while no leader was commanding"
	// reasonDrift: the leader's periodic check, for an agent still running
	// an older revision than the index with nothing pending (e.g. its
	// re-resolve was answered by a replica whose index lagged).
	reasonDrift = "config drift: the agent runs another revision than the index"
	// reasonGap: pushes dropped while this replica's leadership lapsed.
	reasonGap = "leader gap: config changed while this replica was not commanding"
)

// TakeLead readies a replica that has just won the leader lease, and must
// run before it commands (while Config.IsLeader still says false):
//   - mcp_fleet is merged into the picture the replica built from
//     heartbeats as a follower: the pending commands, recovery history and
//     flags the previous leader persisted are taken over (liveness stays
//     the fresher one from heartbeats);
//   - like a restarted supervisor, it declares no agent lost before one
//     detection window has passed;
//   - every live agent whose reported config revision differs from the
//     index gets a re-resolve of those servers: changes made while no
//     replica led were pushed by nobody.
//
// It returns the records read and the agents given such a re-resolve.
// The Supervisor calls it on winning its lease; a caller that supplies its
// own Config.IsLeader calls it itself.
func (f *Fleet) TakeLead(ctx context.Context) (records, reresolves int, err error) {
	f.t.grace.Store(f.t.now())
	if f.kv != nil {
		if records, err = f.t.readFleet(ctx, f.kv, f.t.merge); err != nil {
			return records, 0, err
		}
	}
	f.t.markAllDirty()   // the new leader writes its own picture once
	f.t.gap.Store(false) // the reconcile below covers it
	return records, f.t.reconcile(reasonTakeover, nil), nil
}

// drift is the reconcile loop's memory: stale (agent, server, revision)
// seen at the previous pass. Only a mismatch seen twice in a row is
// repaired, so agents still waiting for a pushed re-resolve's not_before
// are left alone. Reconcile goroutine only.
type drift map[heldConfig]bool

// reconcileDrift is the leader's periodic reconcile.
func (f *Fleet) reconcileDrift(prev *drift) {
	if !f.cmd.Leader() || f.t.mass.Load() {
		*prev = nil
		return
	}
	f.t.reconcile(reasonDrift, prev)
}

// merge folds one mcp_fleet record into a tracked agent, or restores it.
func (t *tracker) merge(r *Record) {
	sh := t.shard(r.Agent)
	sh.mu.Lock()
	a := sh.m[r.Agent]
	if a == nil {
		sh.mu.Unlock()
		t.restore(r)
		return
	}
	now, wall := t.times()
	a.kvRev = r.rev // the record this leader writes over
	if len(r.RecoveryTimes) > len(a.recoveries()) {
		ra := a.more()
		ra.recoveries = ra.recoveries[:0]
		for _, ev := range r.RecoveryTimes {
			ra.recoveries = append(ra.recoveries, now-int64(wall.Sub(ev)))
		}
	}
	if r.Quarantined && !a.quarantined {
		a.quarantined = true
		a.setReason(r.Reason)
	}
	queued := false
	if (a.instance == "" || a.instance == r.Instance) && a.live != StateGone {
		// Same process: its commands are still owed (a restarted one
		// resolves everything itself; a gone one is owed nothing). A zombie
		// flag needs probes only the leader sent, so it is taken over too.
		a.zombie = a.zombie || r.Zombie && a.live == StateHealthy
		for _, p := range r.PendingCommands {
			if hasPending(a, p.ID) || a.quarantined && p.Recovery {
				continue
			}
			a.more().pending = append(a.pending(), &pendingCmd{cmd: p.Command, created: p.Created.UnixNano(),
				sends: p.Sends, queued: p.Queued, recovery: p.Recovery})
			queued = queued || p.Queued
		}
	}
	t.setState(a, deriveState(a.live, a.zombie, a.quarantined), now)
	sh.mu.Unlock()
	if queued {
		t.enqueueRecovery(a.id)
	}
}

func hasPending(a *agent, id string) bool {
	for _, p := range a.pending() {
		if p.cmd.ID == id {
			return true
		}
	}
	return false
}

// markAllDirty makes the next flush write every record.
func (t *tracker) markAllDirty() {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, a := range sh.list {
			a.dirty |= dirtyOther
		}
		sh.mu.Unlock()
	}
}

// heldConfig is one server config an agent reports holding.
type heldConfig struct {
	agent, server string
	revision      uint64
}

// reconcile queues a re-resolve for every live agent holding a config
// revision the index no longer resolves to it (or a deleted one), with
// nothing pending for it. With prev, only mismatches also seen at the
// previous pass count (prev is replaced by this pass's). It returns the
// number of agents queued. Nothing is sent here: the sweep sends due
// commands while this replica commands.
func (t *tracker) reconcile(reason string, prev *drift) int {
	ix := t.index.Load()
	if ix == nil || !ix.Ready() {
		return 0
	}
	var held []heldConfig
	// After a leader gap, also servers an agent should see but does not
	// hold: a server added while nobody commanded was pushed by nobody.
	// Only for agents that report configs (others resolve on their own).
	var reporting []string
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, a := range sh.list {
			if a.goodbye || a.quarantined || a.live != StateHealthy && a.live != StateSuspect {
				continue
			}
			for _, c := range a.configs {
				if !pendingCovers(a, c.server) {
					held = append(held, heldConfig{agent: a.id, server: c.server, revision: c.Revision})
				}
			}
			if prev == nil && len(a.configs) > 0 {
				reporting = append(reporting, a.id)
			}
		}
		sh.mu.Unlock()
	}
	stale := map[string][]string{}
	var order []string
	for _, id := range reporting {
		missing := t.missingServers(ix, id)
		if len(missing) > 0 {
			order = append(order, id)
			stale[id] = missing
		}
	}
	seen := drift{}
	for _, h := range held {
		res, err := ix.Resolve(h.agent, h.server)
		if err == nil && res.Revision != h.revision || errors.Is(err, kvconfig.ErrNotFound) {
			seen[h] = true
			if prev != nil && !(*prev)[h] {
				continue
			}
			if stale[h.agent] == nil {
				order = append(order, h.agent)
			}
			stale[h.agent] = append(stale[h.agent], h.server)
		}
	}
	if prev != nil {
		*prev = seen
	}
	if len(order) == 0 {
		return 0
	}
	spread := spreadFor(len(order), t.cfg.PushSpreadRate, t.cfg.MaxSpread)
	now := t.now()
	for _, id := range order {
		sh := t.shard(id)
		sh.mu.Lock()
		if a := sh.m[id]; a != nil {
			t.addPending(a, agentproto.Command{Type: agentproto.CmdReresolve, Servers: stale[id], Reason: reason,
				NotBefore: t.notBefore(a, hashOffset(id, spread))}, false, now)
		}
		sh.mu.Unlock()
	}
	t.log.Info().Int("agents", len(order)).Dur("spread_ms", spread).Msg(reason + ": re-resolve queued")
	return len(order)
}

// missingServers are the servers the index resolves for agent that it does
// not report holding, with no re-resolve pending for them.
func (t *tracker) missingServers(ix *kvconfig.Index, id string) []string {
	_, items, err := ix.ResolveAll(id)
	if err != nil {
		return nil
	}
	sh := t.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	a := sh.m[id]
	if a == nil {
		return nil
	}
	var missing []string
	for _, it := range items {
		if it.Err != nil || pendingCovers(a, it.Server) {
			continue
		}
		if !slices.ContainsFunc(a.configs, func(c serverApplied) bool { return c.server == it.Server }) {
			missing = append(missing, it.Server)
		}
	}
	return missing
}

// pendingCovers reports whether a pending re-resolve already covers server.
func pendingCovers(a *agent, server string) bool {
	for _, p := range a.pending() {
		if p.cmd.Type != agentproto.CmdReresolve {
			continue
		}
		if len(p.cmd.Servers) == 0 {
			return true
		}
		for _, s := range p.cmd.Servers {
			if s == server {
				return true
			}
		}
	}
	return false
}

// reconcileEvery is the period of the leader's drift check.
func reconcileEvery(c *Config) time.Duration { return 2 * c.ResendInterval }

// TakeLeadTimeout bounds one TakeLead attempt under a lease of the given
// TTL: reading mcp_fleet may take the longer of one write timeout and two
// lease periods.
func TakeLeadTimeout(ttl time.Duration) time.Duration { return max(writeTimeout, 2*ttl) }

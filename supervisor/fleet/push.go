package fleet

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// pusher turns applied KV changes into re-resolve commands for exactly the
// agents whose resolution changed. Changes are queued by the watchers
// (which must not block) and handled in order by one goroutine.
type pusher struct {
	t       *tracker
	log     zerolog.Logger
	metrics *Metrics

	mu      sync.Mutex
	queue   []queuedChange
	wake    chan struct{}
	backlog atomic.Int64 // changes queued or being handled

	registry map[string]struct{} // agents in mcp_agents; run goroutine only

	invMu   sync.Mutex
	invalid map[string]InvalidEntry // bucket + " " + key
}

// queuedChange is a change and whether it arrived after the initial load
// (only those are pushed: a supervisor start must not re-resolve the fleet).
type queuedChange struct {
	kvconfig.Change
	live bool
}

func newPusher(t *tracker, log zerolog.Logger, m *Metrics) *pusher {
	return &pusher{t: t, log: log, metrics: m, wake: make(chan struct{}, 1),
		registry: map[string]struct{}{}, invalid: map[string]InvalidEntry{}}
}

// enqueue is called from a KV watcher's goroutine for every applied change.
func (p *pusher) enqueue(ch kvconfig.Change) {
	ix := p.t.index.Load()
	p.mu.Lock()
	p.queue = append(p.queue, queuedChange{Change: ch, live: ix != nil && ix.Ready()})
	p.backlog.Add(1)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// run handles queued changes until ctx is done.
func (p *pusher) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		}
		p.mu.Lock()
		batch := p.queue
		p.queue = nil
		p.mu.Unlock()
		for _, ch := range batch {
			p.apply(ch)
			p.backlog.Add(-1)
		}
	}
}

func (p *pusher) apply(ch queuedChange) {
	p.noteValidity(ch.Change)
	switch ch.Bucket {
	case kvconfig.BucketAgents:
		if ch.Op == kvconfig.OpDelete {
			delete(p.registry, ch.KeyName)
		} else if kvconfig.ValidID(ch.KeyName) {
			p.registry[ch.KeyName] = struct{}{}
		}
		if !ch.live || !kvconfig.ValidID(ch.KeyName) {
			return
		}
		if ch.Err != nil {
			p.skipInvalid(ch.Change)
			return
		}
		if ch.OldRole != ch.NewRole {
			reason := "role changed from " + orNone(ch.OldRole) + " to " + orNone(ch.NewRole)
			p.push(ch.Change, []string{ch.KeyName}, nil, reason)
		}
	case kvconfig.BucketConfigs:
		if !ch.live || ch.Key.Kind == 0 {
			if ch.live && ch.Err != nil {
				p.skipInvalid(ch.Change)
			}
			return
		}
		if ch.Op == kvconfig.OpPut && ch.Err != nil {
			p.skipInvalid(ch.Change)
			return
		}
		agents := p.affected(ch.Key)
		p.push(ch.Change, agents, []string{ch.Key.Server}, ch.Op.String()+" "+ch.KeyName)
	}
}

func orNone(role string) string {
	if role == "" {
		return "(none)"
	}
	return role
}

// skipInvalid logs and counts an operator entry that is not pushed.
func (p *pusher) skipInvalid(ch kvconfig.Change) {
	p.metrics.pushSkipped("invalid")
	p.log.Error().Err(ch.Err).Str("bucket", ch.Bucket).Str("key", ch.KeyName).Uint64("revision", ch.Revision).
		Msg("invalid entry not pushed; agents keep their last good config")
}

// noteValidity keeps the list of malformed operator entries shown in status.
func (p *pusher) noteValidity(ch kvconfig.Change) {
	k := ch.Bucket + " " + ch.KeyName
	p.invMu.Lock()
	defer p.invMu.Unlock()
	if ch.Err == nil || ch.Op == kvconfig.OpDelete {
		delete(p.invalid, k)
		return
	}
	p.invalid[k] = InvalidEntry{Bucket: ch.Bucket, Key: kvconfig.Truncate(ch.KeyName, 100), Revision: ch.Revision, Error: kvconfig.Truncate(ch.Err.Error(), maxInvalidError)}
}

// invalidEntries returns up to n malformed entries, sorted by bucket and key.
func (p *pusher) invalidEntries(n int) []InvalidEntry {
	p.invMu.Lock()
	keys := make([]string, 0, len(p.invalid))
	for k := range p.invalid {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]InvalidEntry, 0, min(n, len(keys)))
	for _, k := range keys[:min(n, len(keys))] {
		out = append(out, p.invalid[k])
	}
	p.invMu.Unlock()
	return out
}

// affected is every known agent (tracked fleet and role registry) whose
// resolution of k.Server a change to k changes.
func (p *pusher) affected(k kvconfig.Key) []string {
	ix := p.t.index.Load()
	if ix == nil {
		return nil
	}
	if k.Kind == kvconfig.ScopeAgent {
		if _, ok := p.registry[k.Owner]; ok || p.t.tracked(k.Owner) {
			return []string{k.Owner}
		}
		return nil
	}
	var out []string
	ids := p.t.sortedIDs()
	for _, id := range ids {
		if ix.Governs(k, id) {
			out = append(out, id)
		}
	}
	for id := range p.registry {
		if i := sort.SearchStrings(ids, id); i < len(ids) && ids[i] == id {
			continue
		}
		if ix.Governs(k, id) {
			out = append(out, id)
		}
	}
	return out
}

// push sends reresolve (for servers; nil means every server) to agents:
// tracked agents get a pending command re-sent until acked; registry
// agents never heard from get it once. not_before is spread by agent id
// when many agents are affected, so they do not all re-resolve at once.
func (p *pusher) push(ch kvconfig.Change, agents, servers []string, reason string) {
	start := time.Now()
	t := p.t
	p.metrics.configPush(ch.Bucket, len(agents))
	if len(agents) == 0 {
		p.log.Info().Str("bucket", ch.Bucket).Str("key", ch.KeyName).Uint64("revision", ch.Revision).
			Stringer("op", ch.Op).Msg("config change affects no known agent")
		return
	}
	if !t.cmd.Leader() {
		// Only the leader commands. A push dropped here is a leader gap
		// (a failover, or a lapse of this replica's lease): whoever
		// commands next reconciles every agent against the index.
		t.gap.Store(true)
		return
	}
	spread := spreadFor(len(agents), t.cfg.PushSpreadRate, t.cfg.MaxSpread)
	now := t.now()
	var sends []sendOut
	once := 0
	for _, id := range agents {
		cmd := agentproto.Command{Type: agentproto.CmdReresolve, Reason: reason, Servers: servers}
		sh := t.shard(id)
		sh.mu.Lock()
		a := sh.m[id]
		if a == nil {
			sh.mu.Unlock()
			cmd.ID = t.cmd.newID()
			cmd.NotBefore = t.notBefore(&agent{id: id}, hashOffset(id, spread))
			t.cmd.send(id, &cmd, false)
			once++
			continue
		}
		cmd.NotBefore = t.notBefore(a, hashOffset(id, spread))
		pc := t.addPending(a, cmd, false, now)
		if !a.zombie && (a.live == StateHealthy || a.live == StateSuspect) {
			pc.lastSent, pc.sends = now, 1
			sends = append(sends, sendOut{agent: id, cmd: pc.cmd})
		}
		sh.mu.Unlock()
	}
	for i := range sends {
		t.cmd.send(sends[i].agent, &sends[i].cmd, false)
	}
	p.log.Info().Str("bucket", ch.Bucket).Str("key", ch.KeyName).Uint64("revision", ch.Revision).Stringer("op", ch.Op).
		Int("agents", len(agents)).Int("sent_now", len(sends)).Int("unregistered_once", once).Strs("servers", servers).
		Dur("spread_ms", spread).Dur("took_ms", time.Since(start)).Msg("config push: reresolve queued for the affected agents (sent now to the live ones, the rest when they are back)")
}

// tracked reports whether the agent is in the fleet map.
func (t *tracker) tracked(id string) bool {
	sh := t.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.m[id] != nil
}

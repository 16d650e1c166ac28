package fleet

import "github.com/tether-dev/tether/kvconfig"

// Consumer grants: an agent declares its consumers in its heartbeat, and
// an agent is hostile until proven otherwise, so the leader reads the info
// of a declared consumer only when the agent's mcp_agents record grants it
// ("consumers":["<stream>:<durable>",...], written by 'tetherctl agent add
// --consumer'). Otherwise an agent could make the leader read any consumer
// of the account, show another agent's backlog as its own and get itself
// queue-zombie'd. A declaration without a grant is never read: it shows
// state unknown with errUngranted and a warning in fleet.status, is
// counted (tether_queue_ungranted_total) and logged (sampled). In
// admission mode any, an agent with no record is granted nothing: only
// registered grants are read.

// errUngranted is a declared consumer's Error when its agent's record does
// not grant it.
const errUngranted = "not granted to this agent in mcp_agents: its consumer info is not read"

// ungrantedQueue reports whether r, declared by a, is not granted (skip: do
// not read it) and whether it was found so just now (newly: count and log
// it). A newly ungranted record forgets what was read of it. The shard
// lock is held.
func ungrantedQueue(ix *kvconfig.Index, a *agent, r *queueRec) (newly, skip bool) {
	if ix != nil && ix.ConsumerGranted(a.id, r.decl.Stream, r.decl.Durable) {
		if r.err == errUngranted {
			r.err = "" // granted since: read at once
			a.dirty |= dirtyOther
		}
		return false, false
	}
	if r.err == errUngranted {
		return false, true
	}
	*r = queueRec{decl: r.decl, err: errUngranted}
	a.dirty |= dirtyOther
	return true, true
}

// reportUngranted counts and logs (sampled) consumers just found ungranted.
func (t *tracker) reportUngranted(rs []queueRead) {
	for _, rd := range rs {
		if m := t.metrics; m != nil && m.queue != nil {
			m.queue.ungranted.Inc()
		}
		t.warn.Warn().Str("agent", rd.agent).Str("stream", rd.stream).Str("durable", rd.durable).
			Msg("declared consumer not granted to the agent in mcp_agents: its info is not read (grant it with 'tetherctl agent add ID --role ROLE --consumer STREAM:DURABLE')")
	}
}

// ungrantedWarnings are fleet.status warnings for a's ungranted consumers;
// the shard lock is held.
func ungrantedWarnings(a *agent) []string {
	var out []string
	qs := a.queues()
	for i := range qs {
		if r := &qs[i]; r.err == errUngranted {
			sd := r.decl.Stream + ":" + r.decl.Durable
			out = append(out, "consumer "+sd+" is declared but not granted to this agent in mcp_agents, so its info is not read: grant it with 'tetherctl agent add "+
				a.id+" --role ROLE --consumer "+sd+"'")
		}
	}
	return out
}

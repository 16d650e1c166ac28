package fleet

// agentRare is the part of an agent record that a healthy agent of a
// steady fleet leaves at zero: what a restart, a duplicate id, a recovery,
// a command, declared consumers or a reason sets. It is allocated when
// first set and dropped again by the sweep once every field is back at
// zero (tidyRare), so a fleet of healthy agents pays one nil pointer for
// it. Read through the accessors below (nil-safe); write through more(),
// except for clearing, which never allocates.
type agentRare struct {
	prevInst           string // the instance before the last restart
	prevSeq            uint64 // its last sequence number
	lastRestart, dupAt int64
	recoveries         []int64       // recovery events, oldest first (intensity)
	pending            []*pendingCmd // commands waiting for the agent's ack
	queues             []queueRec    // declared consumers (queue.go); nil or non-empty
	reason             string
	restarts, spoofed  uint32
}

// more returns a's rare fields for writing, allocating them.
func (a *agent) more() *agentRare {
	if a.rare == nil {
		a.rare = &agentRare{}
	}
	return a.rare
}

// tidyRare drops a's rare fields once they are all zero again; the
// shard lock is held.
func (a *agent) tidyRare() {
	if r := a.rare; r != nil && r.prevInst == "" && r.prevSeq == 0 && r.lastRestart == 0 && r.dupAt == 0 &&
		len(r.recoveries) == 0 && len(r.pending) == 0 && len(r.queues) == 0 && r.reason == "" &&
		r.restarts == 0 && r.spoofed == 0 {
		a.rare = nil
	}
}

func (a *agent) prevInst() string {
	if a.rare == nil {
		return ""
	}
	return a.rare.prevInst
}

func (a *agent) lastRestart() int64 {
	if a.rare == nil {
		return 0
	}
	return a.rare.lastRestart
}

func (a *agent) dupAt() int64 {
	if a.rare == nil {
		return 0
	}
	return a.rare.dupAt
}

func (a *agent) recoveries() []int64 {
	if a.rare == nil {
		return nil
	}
	return a.rare.recoveries
}

func (a *agent) pending() []*pendingCmd {
	if a.rare == nil {
		return nil
	}
	return a.rare.pending
}

func (a *agent) queues() []queueRec {
	if a.rare == nil {
		return nil
	}
	return a.rare.queues
}

func (a *agent) reason() string {
	if a.rare == nil {
		return ""
	}
	return a.rare.reason
}

func (a *agent) restarts() uint32 {
	if a.rare == nil {
		return 0
	}
	return a.rare.restarts
}

func (a *agent) spoofed() uint32 {
	if a.rare == nil {
		return 0
	}
	return a.rare.spoofed
}

// setPending replaces a's pending commands; nil or empty never allocates.
func (a *agent) setPending(p []*pendingCmd) {
	if len(p) == 0 && a.rare == nil {
		return
	}
	a.more().pending = p
}

// setRecoveries replaces a's recovery events; empty never allocates.
func (a *agent) setRecoveries(ev []int64) {
	if len(ev) == 0 && a.rare == nil {
		return
	}
	a.more().recoveries = ev
}

// setQueues replaces a's declared consumers; nil never allocates.
func (a *agent) setQueues(q []queueRec) {
	if len(q) == 0 && a.rare == nil {
		return
	}
	a.more().queues = q
}

// setReason sets the reason shown for a's state; "" never allocates.
func (a *agent) setReason(s string) {
	if s == "" && a.rare == nil {
		return
	}
	a.more().reason = s
}

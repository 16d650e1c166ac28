package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// ReleaseRequest is the body of mcp.v1.fleet.release.
type ReleaseRequest struct {
	Agent string `json:"agent"`
}

// ReleaseReply answers it: the agent as it is now, and whether it was
// quarantined.
type ReleaseReply struct {
	Agent       string      `json:"agent"`
	Released    bool        `json:"released"`
	Status      AgentStatus `json:"status"`
	Description string      `json:"description"`
}

// ErrNotQuarantined is Release of an agent that is not quarantined.
var ErrNotQuarantined = errors.New("fleet: agent is not quarantined")

// Release ends an agent's quarantine at once (an operator's decision: its
// recovery history is cleared, so the restart intensity starts over). The
// quarantine otherwise ends on its own once the agent is healthy and a
// whole QuarantinePeriod passes without a recovery.
func (f *Fleet) Release(id string) (AgentStatus, error) {
	t := f.t
	sh := t.shard(id)
	sh.mu.Lock()
	a := sh.m[id]
	if a == nil {
		sh.mu.Unlock()
		return AgentStatus{}, fmt.Errorf("%w: %q", ErrUnknownAgent, id)
	}
	if !a.quarantined {
		sh.mu.Unlock()
		st, _ := t.lookup(id)
		return st, ErrNotQuarantined
	}
	now := t.now()
	a.quarantined = false
	a.setRecoveries(nil)
	a.setReason("quarantine released by an operator")
	a.dirty |= dirtyOther
	from, changed := t.setState(a, deriveState(a.live, a.zombie, a.quarantined), now)
	to := a.state
	sh.mu.Unlock()
	t.log.Warn().Str("agent", id).Msg("quarantine released by an operator: recovery commands resume, restart intensity counted afresh")
	if changed {
		t.logTransition(id, from, to, "quarantine released by an operator")
	}
	st, _ := t.lookup(id)
	return st, nil
}

// handleRelease serves mcp.v1.fleet.release on every replica (a plain
// subscription, not the queue group: each replica's picture must agree);
// only the leader answers, on a shared inbox only (the reply-subject rule).
func (f *Fleet) handleRelease(m *nats.Msg) {
	var req ReleaseRequest
	dec := json.NewDecoder(strings.NewReader(string(m.Data)))
	dec.DisallowUnknownFields()
	err := dec.Decode(&req)
	if err == nil {
		err = kvconfig.ValidateID(kvconfig.KindAgent, req.Agent)
	}
	answer := f.cmd.Leader() && strings.HasPrefix(m.Reply, "_INBOX.")
	if err != nil {
		if answer {
			f.replyError(m, agentproto.CodeBadRequest, "fleet.release: want {\"agent\":\"<id>\"}: "+kvconfig.Truncate(err.Error(), 200))
		}
		return
	}
	st, err := f.Release(req.Agent)
	if !answer {
		return
	}
	switch {
	case errors.Is(err, ErrUnknownAgent):
		f.replyError(m, agentproto.CodeNotFound, err.Error())
		return
	case errors.Is(err, ErrNotQuarantined):
		f.replyJSON(m, ReleaseReply{Agent: req.Agent, Status: st, Description: "not quarantined (state " + st.State.String() + "): nothing to release"})
		return
	}
	f.replyJSON(m, ReleaseReply{Agent: req.Agent, Released: true, Status: st,
		Description: "quarantine released: recovery commands resume; restart intensity counted afresh"})
}

func (f *Fleet) replyJSON(m *nats.Msg, v any) {
	data, _ := json.Marshal(v)
	if err := m.Respond(data); err != nil {
		f.log.Warn().Err(err).Msg("cannot send fleet.release reply")
	}
}

func (f *Fleet) replyError(m *nats.Msg, code int, msg string) {
	reply := nats.NewMsg(m.Reply)
	reply.Header.Set("Nats-Service-Error-Code", fmt.Sprint(code))
	reply.Header.Set("Nats-Service-Error", msg)
	body, _ := json.Marshal(agentproto.ErrorBody{Error: agentproto.ErrorDetail{Code: agentproto.ErrorName(code), Status: code, Message: msg}})
	reply.Data = body
	if err := m.RespondMsg(reply); err != nil {
		f.log.Warn().Err(err).Msg("cannot send fleet.release error reply")
	}
}

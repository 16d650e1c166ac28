package kvconfig

import (
	"encoding/json"
	"fmt"
	"sort"
)

// Resolution is the winning config of (agent, server).
type Resolution struct {
	Agent    string
	Server   string
	Role     string // from the registry; "" when the agent has none
	Scope    string // "agent:<agent>", "role:<role>" or "global"
	Key      string
	Revision uint64
	Config   *ServerConfig   // shared and read-only
	Raw      json.RawMessage // the compacted value, shared and read-only
	// AsOf is how current the index was: the highest revisions applied
	// from the configs and agents buckets. A client compares it to tell a
	// newer answer from a late one.
	AsOf AsOf
}

// AsOf is the index's watermark: the highest revision applied per bucket,
// within the buckets' epoch.
type AsOf struct {
	Configs uint64 `json:"configs"`
	Agents  uint64 `json:"agents"`
	// Epoch names the incarnation of both buckets (opaque): a bucket that
	// is deleted and re-created starts a new epoch, whose revisions start
	// again from 1. Empty from a supervisor that predates epochs.
	Epoch string `json:"epoch,omitempty"`
}

// Covers reports whether a is at least as current as b in both buckets.
// Revisions compare only within one epoch: an answer from another epoch
// (the buckets were re-created) covers, since the old revisions mean
// nothing any more.
func (a AsOf) Covers(b AsOf) bool {
	if !a.SameEpoch(b) {
		return true
	}
	return a.Configs >= b.Configs && a.Agents >= b.Agents
}

// SameEpoch reports whether revisions of a and b compare: the same
// epoch, or either from a supervisor that predates epochs.
func (a AsOf) SameEpoch(b AsOf) bool { return a.Epoch == b.Epoch || a.Epoch == "" || b.Epoch == "" }

// NotFoundError reports that no scope has a config for the server.
type NotFoundError struct {
	Agent, Server, Role string
	Consulted           []string // keys looked up, most specific first
}

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("kvconfig: no config for server %q visible to agent %q: looked up %v; write one, e.g. nats kv put %s global.%s '{\"url\":\"https://...\"}'",
		e.Server, e.Agent, e.Consulted, BucketConfigs, e.Server)
}

// Is makes errors.Is(err, ErrNotFound) true.
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// Resolve returns the config of server for agent: the agent scope, then the
// agent's registry role, then global. The first key that exists wins
// entirely. A malformed winner returns its *ConfigError (naming key and
// revision) and never falls through; a malformed registry record for the
// agent is an error unless the agent scope already wins. No scope: a
// *NotFoundError. Invalid identifiers: an *IDError, and no key is built.
func (ix *Index) Resolve(agent, server string) (Resolution, error) {
	if !ValidID(agent) {
		return Resolution{}, ValidateID(KindAgent, agent)
	}
	if !ValidID(server) {
		return Resolution{}, ValidateID(KindServer, server)
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if !ix.configsReady || !ix.agentsReady {
		return Resolution{}, ErrNotReady
	}
	return ix.resolveLocked(agent, server)
}

func (ix *Index) resolveLocked(agent, server string) (Resolution, error) {
	re := ix.registry[agent]
	r := Resolution{Agent: agent, Server: server, Role: re.role, AsOf: ix.asOfLocked()}
	e := ix.agents[agent][server]
	if e == nil && re.err != nil {
		return r, re.err
	}
	if e == nil && re.role != "" {
		e = ix.roles[re.role][server]
	}
	if e == nil {
		e = ix.global[server]
	}
	if e == nil {
		nf := &NotFoundError{Agent: agent, Server: server, Role: re.role}
		nf.Consulted = append(nf.Consulted, "agent."+agent+"."+server)
		if re.role != "" {
			nf.Consulted = append(nf.Consulted, "role."+re.role+"."+server)
		}
		nf.Consulted = append(nf.Consulted, "global."+server)
		return r, nf
	}
	r.Scope, r.Key, r.Revision = e.Scope, e.KeyName, e.Revision
	if e.Err != nil {
		return r, e.Err
	}
	r.Config, r.Raw = e.Config, e.Raw
	return r, nil
}

// ResolveItem is one server of a ResolveAll answer: a Resolution or an error.
type ResolveItem struct {
	Resolution
	Err error
}

// ResolveAll resolves every server visible to the agent (any scope that
// applies to it has the server), sorted by server name, each with its own
// error.
func (ix *Index) ResolveAll(agent string) (role string, items []ResolveItem, err error) {
	if err := ValidateID(KindAgent, agent); err != nil {
		return "", nil, err
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if !ix.configsReady || !ix.agentsReady {
		return "", nil, ErrNotReady
	}
	re := ix.registry[agent]
	names := map[string]struct{}{}
	for s := range ix.agents[agent] {
		names[s] = struct{}{}
	}
	if re.role != "" {
		for s := range ix.roles[re.role] {
			names[s] = struct{}{}
		}
	}
	for s := range ix.global {
		names[s] = struct{}{}
	}
	servers := make([]string, 0, len(names))
	for s := range names {
		servers = append(servers, s)
	}
	sort.Strings(servers)
	items = make([]ResolveItem, 0, len(servers))
	for _, s := range servers {
		r, err := ix.resolveLocked(agent, s)
		items = append(items, ResolveItem{Resolution: r, Err: err})
	}
	return re.role, items, nil
}

// ScopeReport is one scope consulted by Explain.
type ScopeReport struct {
	Scope    string `json:"scope"`
	Key      string `json:"key,omitempty"`
	Present  bool   `json:"present"`
	Valid    bool   `json:"valid"`
	Revision uint64 `json:"revision,omitempty"`
	Error    string `json:"error,omitempty"`
	// Skipped says why a scope was not consulted (the agent has no role).
	Skipped  string `json:"skipped,omitempty"`
	Winner   bool   `json:"winner,omitempty"`
	Shadowed bool   `json:"shadowed,omitempty"`
}

// Explanation is every scope consulted for (agent, server), the winner and
// what it shadows.
type Explanation struct {
	Agent        string        `json:"agent"`
	Server       string        `json:"server"`
	Role         string        `json:"role,omitempty"`
	RoleRevision uint64        `json:"role_revision,omitempty"`
	RoleError    string        `json:"role_error,omitempty"`
	Scopes       []ScopeReport `json:"scopes"`
	Winner       string        `json:"winner,omitempty"` // scope string of the winner
	WinnerKey    string        `json:"winner_key,omitempty"`
	Shadowed     []string      `json:"shadowed,omitempty"` // keys present but not used
	// Outcome is "ok", "invalid_config" or "not_found".
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
	// Warnings are what this resolution does quietly that an operator most
	// likely did not mean (warnings.go): the agent has no entry in
	// mcp_agents, its role is named by no config, a shadowed entry is
	// invalid, an unrecognised key ends in this server's name.
	Warnings []string `json:"warnings,omitempty"`
}

// Explain reports every scope consulted for (agent, server).
func (ix *Index) Explain(agent, server string) (Explanation, error) {
	if err := ValidateID(KindAgent, agent); err != nil {
		return Explanation{}, err
	}
	if err := ValidateID(KindServer, server); err != nil {
		return Explanation{}, err
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if !ix.configsReady || !ix.agentsReady {
		return Explanation{}, ErrNotReady
	}
	re := ix.registry[agent]
	x := Explanation{Agent: agent, Server: server, Role: re.role, RoleRevision: re.revision}
	if re.err != nil {
		x.RoleError = re.err.Error()
	}
	report := func(scope, key string, e *Entry) ScopeReport {
		sr := ScopeReport{Scope: scope, Key: key}
		if e != nil {
			sr.Present, sr.Valid, sr.Revision = true, e.Err == nil, e.Revision
			if e.Err != nil {
				sr.Error = e.Err.Error()
			}
		}
		return sr
	}
	x.Scopes = append(x.Scopes, report("agent:"+agent, "agent."+agent+"."+server, ix.agents[agent][server]))
	switch {
	case re.role != "":
		x.Scopes = append(x.Scopes, report("role:"+re.role, "role."+re.role+"."+server, ix.roles[re.role][server]))
	case re.err != nil:
		x.Scopes = append(x.Scopes, ScopeReport{Scope: "role", Skipped: "registry record in " + BucketAgents + " is malformed"})
	default:
		x.Scopes = append(x.Scopes, ScopeReport{Scope: "role", Skipped: "agent has no role in " + BucketAgents})
	}
	x.Scopes = append(x.Scopes, report("global", "global."+server, ix.global[server]))
	for i := range x.Scopes {
		sr := &x.Scopes[i]
		if !sr.Present {
			continue
		}
		if x.Winner == "" {
			sr.Winner, x.Winner, x.WinnerKey = true, sr.Scope, sr.Key
		} else {
			sr.Shadowed = true
			x.Shadowed = append(x.Shadowed, sr.Key)
		}
	}
	_, err := ix.resolveLocked(agent, server)
	switch {
	case err == nil:
		x.Outcome = "ok"
	case x.Winner == "" && re.err == nil:
		x.Outcome, x.Error = "not_found", err.Error()
	default:
		x.Outcome, x.Error = "invalid_config", err.Error()
	}
	x.Warnings = ix.explainWarningsLocked(&x)
	return x, nil
}

// Applies reports whether key k takes part in resolving k.Server for an
// agent with the given role.
func (k Key) Applies(agent, role string) bool {
	switch k.Kind {
	case ScopeGlobal:
		return true
	case ScopeRole:
		return role != "" && k.Owner == role
	case ScopeAgent:
		return k.Owner == agent
	}
	return false
}

// Governs reports whether a change to key k changes what agent resolves for
// k.Server: k applies to the agent and no more specific key for that
// server exists. It holds for puts and deletes alike, because a change to k
// never changes the more specific keys.
func (ix *Index) Governs(k Key, agent string) bool {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	re := ix.registry[agent]
	if !k.Applies(agent, re.role) {
		return false
	}
	switch k.Kind {
	case ScopeGlobal:
		if re.role != "" && ix.roles[re.role][k.Server] != nil {
			return false
		}
		fallthrough
	case ScopeRole:
		if ix.agents[agent][k.Server] != nil {
			return false
		}
	}
	return true
}

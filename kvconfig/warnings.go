package kvconfig

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Warnings are what resolution does quietly but an operator most likely did
// not mean: an agent with no entry in mcp_agents, a role that no config
// names (a typo such as "coderz" silently gives the agent global configs
// only), an invalid entry hidden behind a more specific one, a key that is
// never used. Explain, fleet.status and the dashboard show the same texts.

// Bounds of the warnings one answer carries.
const (
	// maxUnknownWarnings bounds the unrecognised keys one Explain names.
	maxUnknownWarnings = 3
	// roleSampleAgents is how many agent ids a RoleUse names.
	roleSampleAgents = 3
)

// RoleUse is a role that agents in mcp_agents have but no key in
// mcp_configs names: those agents get only their own and global configs.
type RoleUse struct {
	Role string `json:"role"`
	// Agents is how many registry records name the role.
	Agents int `json:"agents"`
	// Sample is up to three of those agent ids, sorted.
	Sample []string `json:"sample"`
}

// Warning is the operator-facing text of a RoleUse (an agent's own
// agent.<agent>.* configs still apply; the per-agent warning says so).
func (u RoleUse) Warning() string {
	who := "agent " + strings.Join(u.Sample, ", ") + " gets"
	if u.Agents > 1 {
		who = strconv.Itoa(u.Agents) + " agents (" + strings.Join(u.Sample, ", ")
		if u.Agents > len(u.Sample) {
			who += ", ..."
		}
		who += ") get"
	}
	return fmt.Sprintf("role %q is named by no config in %s: %s global configs only; check the role in %s",
		u.Role, BucketConfigs, who, BucketAgents)
}

// roleWarning is the warning for an agent whose role no config names.
func roleWarning(agent, role string, own bool) string {
	return fmt.Sprintf("role %q is named by no config in %s: agent %s gets %s; check the role in %s",
		role, BucketConfigs, agent, gets(agent, own), BucketAgents)
}

// unregisteredWarning is the warning for an agent with no registry record.
func unregisteredWarning(agent string, own bool) string {
	return fmt.Sprintf("agent %q has no entry in %s: it has no role, so the role scope is skipped and it gets %s; register it with its role: tetherctl agent add %s --role ROLE",
		agent, BucketAgents, gets(agent, own), agent)
}

// gets says which configs an agent without a usable role scope gets.
func gets(agent string, own bool) string {
	if own {
		return "only its own agent." + agent + ".* and global configs"
	}
	return "global configs only"
}

// RoleWarning returns the agent's registry role and, when no key in
// mcp_configs names that role, the warning about it ("" otherwise, and for
// an agent without a role). It is the per-agent check of fleet.status.
func (ix *Index) RoleWarning(agent string) (role, warning string) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	re := ix.registry[agent]
	if re.role != "" && len(ix.roles[re.role]) == 0 {
		warning = roleWarning(agent, re.role, len(ix.agents[agent]) > 0)
	}
	return re.role, warning
}

// AgentWarnings returns the warnings about the agent's registration: no
// entry in mcp_agents, or a role that no config names. Nil when there is
// nothing to say or the index is not ready.
func (ix *Index) AgentWarnings(agent string) []string {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if !ix.configsReady || !ix.agentsReady {
		return nil
	}
	return ix.agentWarningsLocked(agent)
}

func (ix *Index) agentWarningsLocked(agent string) []string {
	re, ok := ix.registry[agent]
	own := len(ix.agents[agent]) > 0
	switch {
	case !ok:
		return []string{unregisteredWarning(agent, own)}
	case re.role != "" && len(ix.roles[re.role]) == 0:
		return []string{roleWarning(agent, re.role, own)}
	}
	return nil
}

// explainWarningsLocked adds to the agent's warnings those about its server: an
// invalid entry that the winner shadows (deleting the winner would give a
// 422, not that config) and unrecognised keys that end in the server's
// name (a misspelt scope is never used).
func (ix *Index) explainWarningsLocked(x *Explanation) []string {
	w := ix.agentWarningsLocked(x.Agent)
	for _, sr := range x.Scopes {
		if sr.Shadowed && !sr.Valid {
			w = append(w, fmt.Sprintf("shadowed entry %s revision %d is invalid: if %s is deleted, agent %s gets a 422 for %s instead of a config; fix or delete %s (its error is in its scope above)",
				sr.Key, sr.Revision, x.WinnerKey, x.Agent, x.Server, sr.Key))
		}
	}
	var unknown []string
	suffix := "." + strings.ToLower(x.Server)
	for k := range ix.unknown {
		if strings.HasSuffix(strings.ToLower(k), suffix) {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for i, k := range unknown {
		if i == maxUnknownWarnings {
			w = append(w, fmt.Sprintf("%d more unrecognised keys in %s end in .%s", len(unknown)-i, BucketConfigs, x.Server))
			break
		}
		w = append(w, fmt.Sprintf("unrecognised key %q in %s (revision %d) is never used: keys are global.<server>, role.<role>.<server> or agent.<agent>.<server>",
			Truncate(k, 100), BucketConfigs, ix.unknown[k]))
	}
	return w
}

// UnconfiguredRoles returns the roles that records in mcp_agents name but
// no key in mcp_configs does, sorted by role, at most n (0: all); nil
// before the index is ready. The answer is cached until the next change
// to either bucket, so asking per fleet.status page is cheap.
func (ix *Index) UnconfiguredRoles(n int) []RoleUse {
	ix.cacheMu.Lock()
	defer ix.cacheMu.Unlock()
	ix.mu.RLock()
	if ix.rolesCache.gen != ix.gen || !ix.rolesCache.ok {
		ix.rolesCache.uses, ix.rolesCache.gen, ix.rolesCache.ok = ix.unconfiguredRolesLocked(), ix.gen, true
	}
	ix.mu.RUnlock()
	out := ix.rolesCache.uses
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return slices.Clone(out)
}

// rolesCache is the last UnconfiguredRoles answer and the index generation
// it was computed at.
type rolesCache struct {
	gen  uint64
	ok   bool
	uses []RoleUse
}

func (ix *Index) unconfiguredRolesLocked() []RoleUse {
	if !ix.configsReady || !ix.agentsReady {
		return nil
	}
	byRole := map[string]*RoleUse{}
	for agent, re := range ix.registry {
		if re.role == "" || len(ix.roles[re.role]) > 0 {
			continue
		}
		u := byRole[re.role]
		if u == nil {
			u = &RoleUse{Role: re.role}
			byRole[re.role] = u
		}
		u.Agents++
		i, _ := slices.BinarySearch(u.Sample, agent)
		if i < roleSampleAgents {
			u.Sample = slices.Insert(u.Sample, i, agent)
			if len(u.Sample) > roleSampleAgents {
				u.Sample = u.Sample[:roleSampleAgents]
			}
		}
	}
	out := make([]RoleUse, 0, len(byRole))
	for _, u := range byRole {
		out = append(out, *u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Role < out[j].Role })
	return out
}

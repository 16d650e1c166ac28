package kvconfig

import (
	"errors"
	"slices"
	"strconv"
	"strings"
)

// AgentRecord is a value of the operator-owned role registry (mcp_agents):
// key <agent>, value {"role":"<role>"} or, for an agent granted durable
// consumers ('tetherctl agent add --consumer'),
// {"role":"<role>","consumers":["<stream>:<durable>",...]}. The role used
// in resolution comes from here, never from what an agent claims about
// itself; so do the consumers whose info the supervisor reads for it.
type AgentRecord struct {
	Role string `json:"role"`
	// Consumers are the granted durables, "<stream>:<durable>" each: at
	// most MaxAgentConsumers, no duplicates. Absent: none.
	Consumers []string `json:"consumers,omitempty"`
}

// MaxAgentConsumers bounds the consumers of one registry record (the
// grants of one agent).
const MaxAgentConsumers = 16

// agentFields are the exact field names of a registry value.
var agentFields = []string{"role", "consumers"}

// DecodeAgentRecord decodes a registry value strictly (exactly one JSON
// object; no unknown, misspelt or duplicate keys) and validates the role
// and the consumers. The error is a *ConfigErrors naming bucket mcp_agents
// and every problem.
func DecodeAgentRecord(data []byte) (AgentRecord, error) {
	var r AgentRecord
	p := &problems{bucket: BucketAgents}
	members, ok := document(p, data, `{"role":"<role>"}`)
	if !ok {
		return r, p.err()
	}
	role := true
	for _, m := range uniqueKeys(p, "", members, agentFields) {
		switch m.key {
		case "role":
			role = decodeValue(p, m.key, m.raw, &r.Role)
		case "consumers":
			if decodeValue(p, m.key, m.raw, &r.Consumers) {
				validConsumers(p, r.Consumers)
			}
		}
	}
	if role {
		if err := ValidateID(KindRole, r.Role); err != nil {
			p.add("role", err)
		}
	}
	return r, p.err()
}

// validConsumers checks each "<stream>:<durable>" of a registry record.
func validConsumers(p *problems, cs []string) {
	if len(cs) > MaxAgentConsumers {
		p.addf("consumers", "%d consumers: at most %d per agent", len(cs), MaxAgentConsumers)
		return
	}
	for i, c := range cs {
		field := "consumers[" + strconv.Itoa(i) + "]"
		stream, durable, ok := strings.Cut(c, ":")
		if !ok {
			p.addf(field, "%q: want \"<stream>:<durable>\", e.g. \"TASKS_a7:a7\"", Truncate(c, 80))
			continue
		}
		if err := errors.Join(ValidateID("stream", stream), ValidateID("durable", durable)); err != nil {
			p.add(field, err)
			continue
		}
		if slices.Index(cs, c) < i {
			p.addf(field, "%q appears more than once; keep exactly one", c)
		}
	}
}

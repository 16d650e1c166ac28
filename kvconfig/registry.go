package kvconfig

// AgentRecord is a value of the operator-owned role registry (mcp_agents):
// key <agent>, value {"role":"<role>"}. The role used in resolution comes
// from here, never from what an agent claims about itself.
type AgentRecord struct {
	Role string `json:"role"`
}

// agentFields are the exact field names of a registry value.
var agentFields = []string{"role"}

// DecodeAgentRecord decodes a registry value strictly (exactly one JSON
// object; no unknown, misspelt or duplicate keys) and validates the role.
// The error is a *ConfigErrors naming bucket mcp_agents and every problem.
func DecodeAgentRecord(data []byte) (AgentRecord, error) {
	var r AgentRecord
	p := &problems{bucket: BucketAgents}
	members, ok := document(p, data, `{"role":"<role>"}`)
	if !ok {
		return r, p.err()
	}
	role := true
	for _, m := range uniqueKeys(p, "", members, agentFields) {
		role = decodeValue(p, m.key, m.raw, &r.Role)
	}
	if role {
		if err := ValidateID(KindRole, r.Role); err != nil {
			p.add("role", err)
		}
	}
	return r, p.err()
}

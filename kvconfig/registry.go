package kvconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// AgentRecord is a value of the operator-owned role registry (mcp_agents):
// key <agent>, value {"role":"<role>"}. The role used in resolution comes
// from here, never from what an agent claims about itself.
type AgentRecord struct {
	Role string `json:"role"`
}

// DecodeAgentRecord decodes a registry value strictly and validates the role.
func DecodeAgentRecord(data []byte) (AgentRecord, error) {
	var r AgentRecord
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, &ConfigError{Bucket: BucketAgents, Err: fmt.Errorf("want {\"role\":\"<role>\"}: %w", err)}
	}
	if _, err := dec.Token(); err != io.EOF {
		return r, &ConfigError{Bucket: BucketAgents, Err: errors.New("trailing data after the JSON object")}
	}
	if err := exactKeys(data, "", []string{"role"}); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			ce.Bucket = BucketAgents
		}
		return r, err
	}
	if err := ValidateID(KindRole, r.Role); err != nil {
		return r, &ConfigError{Bucket: BucketAgents, Field: "role", Err: err}
	}
	return r, nil
}

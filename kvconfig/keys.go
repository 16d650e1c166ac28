package kvconfig

import (
	"errors"
	"fmt"
	"strings"
)

// Bucket names of the wire contract.
const (
	// BucketConfigs holds the configs, one key per scope and server.
	BucketConfigs = "mcp_configs"
	// BucketAgents is the operator-owned role registry: <agent> -> {"role":...}.
	BucketAgents = "mcp_agents"
	// BucketFleet is written by the supervisor: <agent> -> last known status.
	BucketFleet = "mcp_fleet"
)

// ScopeKind is the level of a config key, from least to most specific.
type ScopeKind int

const (
	// ScopeGlobal keys look like global.<server>.
	ScopeGlobal ScopeKind = iota + 1
	// ScopeRole keys look like role.<role>.<server>.
	ScopeRole
	// ScopeAgent keys look like agent.<agent>.<server>.
	ScopeAgent
)

func (k ScopeKind) String() string {
	switch k {
	case ScopeGlobal:
		return "global"
	case ScopeRole:
		return "role"
	case ScopeAgent:
		return "agent"
	}
	return fmt.Sprintf("ScopeKind(%d)", int(k))
}

// ErrUnrecognisedKey is wrapped by ParseKey for a key that is not one of the
// three shapes of the config bucket.
var ErrUnrecognisedKey = errors.New("kvconfig: unrecognised key")

// Key is a parsed config key.
type Key struct {
	Kind ScopeKind
	// Owner is the role or the agent id; empty for global keys.
	Owner  string
	Server string
}

// GlobalKey returns the key global.<server>.
func GlobalKey(server string) (Key, error) {
	if err := ValidateID(KindServer, server); err != nil {
		return Key{}, err
	}
	return Key{Kind: ScopeGlobal, Server: server}, nil
}

// RoleKey returns the key role.<role>.<server>.
func RoleKey(role, server string) (Key, error) {
	if err := ValidateID(KindRole, role); err != nil {
		return Key{}, err
	}
	if err := ValidateID(KindServer, server); err != nil {
		return Key{}, err
	}
	return Key{Kind: ScopeRole, Owner: role, Server: server}, nil
}

// AgentKey returns the key agent.<agent>.<server>.
func AgentKey(agent, server string) (Key, error) {
	if err := ValidateID(KindAgent, agent); err != nil {
		return Key{}, err
	}
	if err := ValidateID(KindServer, server); err != nil {
		return Key{}, err
	}
	return Key{Kind: ScopeAgent, Owner: agent, Server: server}, nil
}

// String is the KV key.
func (k Key) String() string {
	switch k.Kind {
	case ScopeGlobal:
		return "global." + k.Server
	case ScopeRole:
		return "role." + k.Owner + "." + k.Server
	case ScopeAgent:
		return "agent." + k.Owner + "." + k.Server
	}
	return ""
}

// Scope is the scope string used in replies: "global", "role:<role>" or
// "agent:<agent>".
func (k Key) Scope() string {
	switch k.Kind {
	case ScopeGlobal:
		return "global"
	case ScopeRole:
		return "role:" + k.Owner
	case ScopeAgent:
		return "agent:" + k.Owner
	}
	return ""
}

// ParseKey parses a config bucket key. A key of another shape wraps
// ErrUnrecognisedKey; a key of the right shape with a bad identifier returns
// the *IDError.
func ParseKey(s string) (Key, error) {
	parts := strings.Split(s, ".")
	bad := func(why string) (Key, error) {
		return Key{}, fmt.Errorf("%w %q: %s; expected global.<server>, role.<role>.<server> or agent.<agent>.<server>", ErrUnrecognisedKey, Truncate(s, 200), why)
	}
	switch parts[0] {
	case "global":
		if len(parts) != 2 {
			return bad(fmt.Sprintf("global keys have 2 dot-separated parts, this has %d", len(parts)))
		}
		return GlobalKey(parts[1])
	case "role":
		if len(parts) != 3 {
			return bad(fmt.Sprintf("role keys have 3 dot-separated parts, this has %d", len(parts)))
		}
		return RoleKey(parts[1], parts[2])
	case "agent":
		if len(parts) != 3 {
			return bad(fmt.Sprintf("agent keys have 3 dot-separated parts, this has %d", len(parts)))
		}
		return AgentKey(parts[1], parts[2])
	}
	return bad(fmt.Sprintf("unknown scope %q", Truncate(parts[0], 64)))
}

// ParseScope parses a scope as operators type it: "global", "role:<role>",
// "agent:<agent>" (the reply spelling) or "role.<role>" / "agent.<agent>".
func ParseScope(s string) (kind ScopeKind, owner string, err error) {
	if s == "global" {
		return ScopeGlobal, "", nil
	}
	name, owner, ok := strings.Cut(s, ":")
	if !ok {
		name, owner, ok = strings.Cut(s, ".")
	}
	if ok {
		switch name {
		case "role":
			return ScopeRole, owner, ValidateID(KindRole, owner)
		case "agent":
			return ScopeAgent, owner, ValidateID(KindAgent, owner)
		}
	}
	return 0, "", fmt.Errorf("kvconfig: unrecognised scope %q: use global, role:<role> or agent:<agent>", Truncate(s, 100))
}

// KeyFor builds the key of server at a parsed scope.
func KeyFor(kind ScopeKind, owner, server string) (Key, error) {
	switch kind {
	case ScopeGlobal:
		return GlobalKey(server)
	case ScopeRole:
		return RoleKey(owner, server)
	case ScopeAgent:
		return AgentKey(owner, server)
	}
	return Key{}, fmt.Errorf("kvconfig: unknown scope kind %d", kind)
}

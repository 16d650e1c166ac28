package dashboard

import (
	"encoding/json"

	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// Bounds of the fleet page's notices.
const (
	// maxInvalidShown bounds the invalid entries listed (fleet.status's bound).
	maxInvalidShown = 50
	// maxInvalidError bounds one listed entry's error text.
	maxInvalidError = 500
	// maxRolesShown bounds the roles no config names that are listed.
	maxRolesShown = 50
)

// notices is what the fleet page shows above the table, because resolution
// goes on quietly around it: malformed operator entries (agents keep their
// last good config) and roles that no config names (their agents get
// global configs only). Both lists are always present, so an empty one
// clears what a page shows.
type notices struct {
	Invalid           []fleet.InvalidEntry `json:"invalid"`
	UnconfiguredRoles []roleNotice         `json:"unconfigured_roles"`
	// ServersDown are the MCP servers failing for most of the live agents
	// that call them (first maxServersShown).
	ServersDown []serverNotice `json:"servers_down"`
}

// maxServersShown bounds the down MCP servers listed.
const maxServersShown = 50

// serverNotice is one MCP server down across the fleet.
type serverNotice struct {
	Server      string `json:"server"`
	Failing     int    `json:"failing"`
	Agents      int    `json:"agents"`
	Since       int64  `json:"since,omitempty"` // unix ms
	LastFailure string `json:"last_failure,omitempty"`
	// Summary is the line the CLI and the log say: "echo down for 2/2 agents".
	Summary string `json:"summary"`
}

// ServerSource is implemented by a Source that knows MCP server health
// across the fleet (a supervisor's fleet does).
type ServerSource interface {
	Servers() []fleet.ServerHealth
}

func (v fleetView) Servers() []fleet.ServerHealth {
	if f := v.f(); f != nil {
		return f.Servers()
	}
	return nil
}

// downServers lists the down servers src reports, if it reports any.
func downServers(src Source) []serverNotice {
	out := []serverNotice{}
	ss, ok := src.(ServerSource)
	if !ok {
		return out
	}
	for _, h := range ss.Servers() {
		if h.State != "down" || len(out) == maxServersShown {
			continue
		}
		n := serverNotice{Server: h.Server, Failing: h.Failing, Agents: h.Agents, LastFailure: h.LastFailure, Summary: h.Summary()}
		if !h.Since.IsZero() {
			n.Since = h.Since.UnixMilli()
		}
		out = append(out, n)
	}
	return out
}

// roleNotice is a role no config names, with the warning explain and
// fleet.status give about it.
type roleNotice struct {
	kvconfig.RoleUse
	Warning string `json:"warning"`
}

// sampleNotices reads the notices from src, as JSON.
func sampleNotices(src Source) []byte {
	n := notices{Invalid: src.InvalidEntries(maxInvalidShown), UnconfiguredRoles: []roleNotice{}, ServersDown: downServers(src)}
	if n.Invalid == nil {
		n.Invalid = []fleet.InvalidEntry{}
	}
	for i := range n.Invalid {
		e := &n.Invalid[i]
		e.Key, e.Error = kvconfig.Truncate(e.Key, 100), kvconfig.Truncate(e.Error, maxInvalidError)
	}
	for _, u := range src.UnconfiguredRoles(maxRolesShown) {
		n.UnconfiguredRoles = append(n.UnconfiguredRoles, roleNotice{RoleUse: u, Warning: u.Warning()})
	}
	data, _ := json.Marshal(n)
	return data
}

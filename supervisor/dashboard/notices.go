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
}

// roleNotice is a role no config names, with the warning explain and
// fleet.status give about it.
type roleNotice struct {
	kvconfig.RoleUse
	Warning string `json:"warning"`
}

// sampleNotices reads the notices from src, as JSON.
func sampleNotices(src Source) []byte {
	n := notices{Invalid: src.InvalidEntries(maxInvalidShown), UnconfiguredRoles: []roleNotice{}}
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

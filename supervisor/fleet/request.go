package fleet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// statusKeys are the keys of a fleet.status request, in the order
// messages list them. Names are exact: encoding/json would match "State"
// to state, and a filter that is not applied must never pass for one.
var statusKeys = []string{"agent", "state", "role", "after", "limit"}

// statusStates are the states a request may filter by, as messages list them.
const statusStates = "healthy, suspect, lost, zombie, quarantined, gone"

// statusQuery is a validated fleet.status request.
type statusQuery struct {
	agentproto.FleetStatusRequest
	state State
}

// parseStatusRequest decodes a fleet.status body strictly: empty (or
// null) is no filter; anything else must be one JSON object of the
// statusKeys, each at most once and of its type. A typo'd filter is a 400
// that names it, never a reply for the whole fleet.
func parseStatusRequest(data []byte) (statusQuery, error) {
	var q statusQuery
	if data = bytes.TrimSpace(data); len(data) == 0 {
		return q, nil
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(data, &members); err != nil {
		return q, errors.New("fleet: fleet.status body is not a JSON object of " + strings.Join(statusKeys, ", ") + ": " + err.Error())
	}
	if dups := kvconfig.DuplicateKeys(data); len(dups) > 0 {
		return q, fmt.Errorf("fleet: fleet.status key %s appears more than once; give each filter once", quoteKeys(dups))
	}
	var unknown []string
	for k := range members {
		if !slices.Contains(statusKeys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		return q, unknownKeysError(unknown)
	}
	fields := map[string]any{"agent": &q.Agent, "state": &q.State, "role": &q.Role, "after": &q.After, "limit": &q.Limit}
	for _, k := range statusKeys {
		raw, ok := members[k]
		if !ok {
			continue
		}
		if err := json.Unmarshal(raw, fields[k]); err != nil {
			want := "a string"
			if k == "limit" {
				want = "an integer"
			}
			return q, fmt.Errorf("fleet: fleet.status key %q must be %s, not %s", k, want, kvconfig.Truncate(string(raw), 40))
		}
	}
	return q, q.validate()
}

// validate checks the decoded filters.
func (q *statusQuery) validate() error {
	for _, f := range []struct{ kind, v string }{{kvconfig.KindAgent, q.Agent}, {kvconfig.KindRole, q.Role}, {"after", q.After}} {
		if f.v != "" {
			if err := kvconfig.ValidateID(f.kind, f.v); err != nil {
				return err
			}
		}
	}
	if q.State != "" {
		st, ok := ParseState(q.State)
		if !ok {
			return errors.New("fleet: fleet.status state " + strconv.Quote(kvconfig.Truncate(q.State, 40)) + " is not one of " + statusStates)
		}
		q.state = st
	}
	if q.Limit < 0 {
		return errors.New("fleet: fleet.status limit " + strconv.Itoa(q.Limit) + " is negative (0 or absent: as many as fit)")
	}
	return nil
}

// unknownKeysError names every unknown key (sorted, at most 5), with a
// hint for a near miss, and the accepted keys.
func unknownKeysError(unknown []string) error {
	slices.Sort(unknown)
	more := ""
	if len(unknown) > 5 {
		more = fmt.Sprintf(" and %d more", len(unknown)-5)
		unknown = unknown[:5]
	}
	noun := "key"
	if len(unknown) > 1 || more != "" {
		noun = "keys"
	}
	named := make([]string, len(unknown))
	for i, k := range unknown {
		named[i] = strconv.Quote(kvconfig.Truncate(k, 40))
		if s := nearestKey(k); s != "" {
			named[i] += " (did you mean " + strconv.Quote(s) + "?)"
		}
	}
	return fmt.Errorf("fleet: fleet.status unknown %s %s%s; the accepted keys are %s (all optional; names are case-sensitive)",
		noun, strings.Join(named, ", "), more, strings.Join(statusKeys, ", "))
}

func quoteKeys(keys []string) string {
	q := make([]string, len(keys))
	for i, k := range keys {
		q[i] = strconv.Quote(kvconfig.Truncate(k, 40))
	}
	return strings.Join(q, ", ")
}

// nearestKey is the accepted key k most likely meant: the same name in
// another case, or one at most two edits away; "" when none is.
func nearestKey(k string) string {
	if len(k) > 16 {
		return ""
	}
	best, bestD := "", 3
	for _, s := range statusKeys {
		if strings.EqualFold(s, k) {
			return s
		}
		if d := editDistance(strings.ToLower(k), s); d < bestD {
			best, bestD = s, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

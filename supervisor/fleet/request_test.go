package fleet

import (
	"strings"
	"testing"
)

// A fleet.status filter is applied or refused: a typo'd key, a key in the
// wrong case, a repeated key or an unknown state is a 400 that names it,
// never a reply for the whole fleet (issue 12).
func TestParseStatusRequestStrict(t *testing.T) {
	for _, tc := range []struct {
		body  string
		want  []string // substrings of the error; nil: accepted
		state State
		limit int
	}{
		{body: ``},
		{body: `  `},
		{body: `{}`},
		{body: `null`},
		{body: `{"state":"zombie","role":"coder","limit":5}`, state: StateZombie, limit: 5},
		{body: `{"agent":"a7","after":"a6"}`},
		{body: `{"stat":"zombie"}`, want: []string{`unknown key "stat" (did you mean "state"?)`,
			"the accepted keys are agent, state, role, after, limit"}},
		{body: `{"State":"zombie"}`, want: []string{`unknown key "State" (did you mean "state"?)`, "case-sensitive"}},
		{body: `{"zzz":1,"limt":2,"state":"lost"}`, want: []string{`unknown keys "limt" (did you mean "limit"?), "zzz";`}},
		{body: `{"a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1}`, want: []string{`"e" and 2 more;`}},
		{body: `{"state":"zombie","state":"lost"}`, want: []string{`key "state" appears more than once`}},
		{body: `{"state":"sleepy"}`, want: []string{`state "sleepy" is not one of healthy, suspect, lost, zombie, quarantined, gone`}},
		{body: `{"state":"Zombie"}`, want: []string{`state "Zombie" is not one of`}},
		{body: `{"limit":"10"}`, want: []string{`key "limit" must be an integer, not "10"`}},
		{body: `{"limit":1.5}`, want: []string{`key "limit" must be an integer`}},
		{body: `{"role":7}`, want: []string{`key "role" must be a string, not 7`}},
		{body: `{"limit":-1}`, want: []string{"limit -1 is negative"}},
		{body: `{"agent":"a.b"}`, want: []string{`invalid agent id "a.b"`}},
		{body: `["state"]`, want: []string{"not a JSON object of agent, state, role, after, limit"}},
		{body: `not json`, want: []string{"not a JSON object"}},
		{body: `{"state":"lost"} {}`, want: []string{"not a JSON object"}},
	} {
		q, err := parseStatusRequest([]byte(tc.body))
		if tc.want == nil {
			if err != nil || q.state != tc.state || q.Limit != tc.limit {
				t.Errorf("%s: got %+v, %v; want state %v limit %d", tc.body, q, err, tc.state, tc.limit)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted as %+v, want an error", tc.body, q)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.body, err, w)
			}
		}
	}
}

func TestNearestKey(t *testing.T) {
	for k, want := range map[string]string{"stat": "state", "STATE": "state", "agents": "agent", "roles": "role",
		"limt": "limit", "aftr": "after", "zombie": "", "x": "", strings.Repeat("s", 40): ""} {
		if got := nearestKey(k); got != want {
			t.Errorf("nearestKey(%q) = %q, want %q", k, got, want)
		}
	}
}

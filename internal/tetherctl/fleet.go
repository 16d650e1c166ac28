package tetherctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// fleetStates are the agent states as fleet.status spells them.
var fleetStates = []string{"healthy", "suspect", "lost", "zombie", "quarantined", "gone"}

// maxFleetPages bounds paging through fleet.status.
const maxFleetPages = 100000

// fleetPage is one fleet.status reply. Agents are kept raw: their fields
// grow, and --json passes them through unchanged.
type fleetPage struct {
	Counts map[string]int    `json:"counts"`
	Agents []json.RawMessage `json:"agents"`
	Next   string            `json:"next"`
	// Optional fields the supervisor may add; shown when present.
	MassSilence bool           `json:"mass_silence,omitempty"`
	Silent      int            `json:"silent,omitempty"`
	Invalid     []invalidEntry `json:"invalid,omitempty"`
	// UnconfiguredRoles: roles agents have that no config names.
	UnconfiguredRoles []kvconfig.RoleUse `json:"unconfigured_roles,omitempty"`
	// Servers is MCP server health across the fleet, by server name.
	Servers map[string]serverHealth `json:"servers,omitempty"`
}

// serverHealth is one MCP server across the fleet (fleet.status servers).
type serverHealth struct {
	State       string    `json:"state"`
	Failing     int       `json:"failing"`
	Agents      int       `json:"agents"`
	Since       time.Time `json:"since,omitzero"`
	LastFailure string    `json:"last_failure,omitempty"`
}

// invalidEntry is a malformed operator KV entry the supervisor reports.
type invalidEntry struct {
	Bucket   string `json:"bucket"`
	Key      string `json:"key"`
	Revision uint64 `json:"revision"`
	Error    string `json:"error"`
}

func (a *app) checkFleetFlags() error {
	cmd := lookup("fleet")
	if s := a.f.state; s != "" && !slices.Contains(fleetStates, s) {
		return usageErr(cmd, "--state %q: use one of %s", s, strings.Join(fleetStates, ", "))
	}
	if a.f.role != "" {
		if err := idArg(kvconfig.KindRole, a.f.role); err != nil {
			return err
		}
	}
	if a.f.agent != "" {
		if err := idArg(kvconfig.KindAgent, a.f.agent); err != nil {
			return err
		}
	}
	if a.f.limit < 0 {
		return usageErr(cmd, "--limit %d: must be 0 (supervisor's default) or more", a.f.limit)
	}
	return nil
}

func (a *app) cmdFleet(ctx context.Context, _ []string) error {
	if err := a.checkFleetFlags(); err != nil {
		return err
	}
	all, err := a.fetchFleet(ctx)
	if err != nil {
		return err
	}
	if a.g.json {
		if all.Agents == nil {
			all.Agents = []json.RawMessage{}
		}
		all.Next = ""
		return a.printJSON(all)
	}
	a.printFleet(all)
	if a.f.agent != "" && len(all.Agents) == 0 {
		return fail(ErrNotFound, nil, "the supervisor knows no agent %q (it appears after its first heartbeat)", a.f.agent)
	}
	return nil
}

// fetchFleet follows next until the last page; counts come from the first.
func (a *app) fetchFleet(ctx context.Context) (fleetPage, error) {
	req := agentproto.FleetStatusRequest{Agent: a.f.agent, State: a.f.state, Role: a.f.role, Limit: a.f.limit}
	subject := a.subjects().FleetStatus()
	var all fleetPage
	for page := 0; ; page++ {
		body, _ := json.Marshal(req)
		data, err := a.request(ctx, subject, body)
		if err != nil {
			return all, err
		}
		var p fleetPage
		if err := json.Unmarshal(data, &p); err != nil {
			return all, fail(nil, err, "cannot decode the supervisor's %s reply: %v", subject, err)
		}
		if page == 0 {
			all.Counts, all.MassSilence, all.Silent, all.Invalid, all.UnconfiguredRoles = p.Counts, p.MassSilence, p.Silent, p.Invalid, p.UnconfiguredRoles
			all.Servers = p.Servers
		}
		all.Agents = append(all.Agents, p.Agents...)
		if p.Next == "" {
			return all, nil
		}
		if p.Next == req.After || page >= maxFleetPages {
			return all, fail(nil, nil, "%s keeps returning next=%q after %d pages; the supervisor's paging looks broken", subject, p.Next, page+1)
		}
		req.After = p.Next
	}
}

func (a *app) printFleet(all fleetPage) {
	t := newTable(a.out, "AGENT", "STATE", "ROLE", "LAST HEARD", "RTT", "CONFIGS (applied/current)", "REASON")
	for _, raw := range all.Agents {
		m := decodeObject(raw)
		t.row(str(m, "agent", "id"), str(m, "state"), roleCell(m), a.lastHeard(m), rtt(m),
			configsCell(m["configs"]), reasonCell(m))
	}
	t.flush()
	fmt.Fprintln(a.out, a.summaryLine(len(all.Agents), all.Counts))
	if all.MassSilence {
		fmt.Fprintf(a.out, "WARNING: mass silence: %d agents went silent at once; the supervisor suspects the broker or its own link and is holding commands\n", all.Silent)
	}
	for _, e := range all.Invalid {
		fmt.Fprintf(a.out, "invalid entry: %s %s revision %d: %s\n", e.Bucket, e.Key, e.Revision, strings.TrimPrefix(e.Error, "kvconfig: "))
	}
	for _, u := range all.UnconfiguredRoles {
		fmt.Fprintf(a.out, "WARNING: %s\n", u.Warning())
	}
	a.printServers(all)
}

// printServers says how each MCP server fares across the fleet (down ones
// first) and which agents fail one that others reach.
func (a *app) printServers(all fleetPage) {
	names := sortedKeys(all.Servers)
	slices.SortStableFunc(names, func(x, y string) int {
		dx, dy := all.Servers[x].State == "down", all.Servers[y].State == "down"
		switch {
		case dx && !dy:
			return -1
		case dy && !dx:
			return 1
		}
		return 0
	})
	for _, n := range names {
		h := all.Servers[n]
		if h.State == "down" {
			line := fmt.Sprintf("MCP server %s down for %d/%d agents", n, h.Failing, h.Agents)
			if !h.Since.IsZero() {
				line += " since " + h.Since.UTC().Format(time.RFC3339) + " (" + ago(a.cli.Now().Sub(h.Since)) + ")"
			}
			if h.LastFailure != "" {
				line += ", last failure " + h.LastFailure
			}
			fmt.Fprintln(a.out, line+"; its agents are not judged or recovered for it")
			continue
		}
		fmt.Fprintf(a.out, "MCP server %s ok (%d/%d agents failing)\n", n, h.Failing, h.Agents)
	}
	for _, raw := range all.Agents {
		m := decodeObject(raw)
		fs, _ := m["mcp_failing"].([]any)
		for _, f := range fs {
			s, _ := f.(string)
			why := ""
			if srv, ok := m["servers"].(map[string]any); ok {
				if e, ok := srv[s].(map[string]any); ok && str(e, "last_failure") != "" {
					why = " (" + str(e, "last_failure") + ")"
				}
			}
			fmt.Fprintf(a.out, "WARNING: agent %s fails calls to MCP server %s%s while other agents reach it; it was sent a reresolve of %s\n", str(m, "agent"), s, why, s)
		}
	}
}

// summaryLine says how many agents the table shows, under which filters,
// and what the counts are over: fleet.status counts every agent matching
// --agent and --role (not --state), so they are fleet-wide only without
// those two.
func (a *app) summaryLine(shown int, counts map[string]int) string {
	var filters, scope []string
	if a.f.agent != "" {
		filters = append(filters, "agent "+a.f.agent)
		scope = append(scope, "agent "+a.f.agent)
	}
	if a.f.role != "" {
		filters = append(filters, "role "+a.f.role)
		scope = append(scope, "role "+a.f.role)
	}
	if a.f.state != "" {
		filters = append(filters, "state "+a.f.state)
	}
	line := fmt.Sprintf("shown: %d agent(s)", shown)
	if len(filters) > 0 {
		line += " with " + strings.Join(filters, ", ")
	}
	c := countsLine(counts)
	if c == "" {
		c = "none"
	}
	if len(scope) == 0 {
		return line + "; fleet: " + c
	}
	return line + "; all with " + strings.Join(scope, ", ") + ": " + c
}

// roleCell is the agent's role, flagged when the status warns about it
// (the fleet-level WARNING line below the table says what to do).
func roleCell(m map[string]any) string {
	role := str(m, "role")
	ws, _ := m["warnings"].([]any)
	for _, w := range ws {
		if s, _ := w.(string); role != "" && strings.HasPrefix(s, "role "+strconv.Quote(role)+" is named by no config") {
			return role + " (no config names it)"
		}
	}
	return role
}

func countsLine(counts map[string]int) string {
	var parts []string
	for _, s := range fleetStates {
		if n, ok := counts[s]; ok {
			parts = append(parts, fmt.Sprintf("%s %d", s, n))
		}
	}
	for _, s := range sortedKeys(counts) {
		if !slices.Contains(fleetStates, s) {
			parts = append(parts, fmt.Sprintf("%s %d", s, counts[s]))
		}
	}
	return strings.Join(parts, ", ")
}

func decodeObject(raw []byte) map[string]any {
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	_ = dec.Decode(&m)
	return m
}

// reasonCell is the status's reason, with the backlog of its task
// queues when it has one (a queue zombie's reason names the consumer).
func reasonCell(m map[string]any) string {
	reason := str(m, "reason")
	n, ok := m["backlog"].(json.Number)
	if !ok || n.String() == "0" {
		return reason
	}
	if reason != "" {
		reason += "; "
	}
	return reason + "backlog " + n.String() + " tasks"
}

// str returns the first of keys holding a string.
func str(m map[string]any, keys ...string) string {
	for _, k := range keys {
		if s, ok := m[k].(string); ok {
			return s
		}
	}
	return ""
}

// num returns the first of keys holding a number.
func num(m map[string]any, keys ...string) (float64, bool) {
	for _, k := range keys {
		switch n := m[k].(type) {
		case json.Number:
			if f, err := n.Float64(); err == nil {
				return f, true
			}
		case float64:
			return n, true
		}
	}
	return 0, false
}

// lastHeard reads whichever last-heard field the status carries: an
// RFC 3339 time, epoch milliseconds, or an age in milliseconds.
func (a *app) lastHeard(m map[string]any) string {
	if s := str(m, "last_heard", "last_heard_at", "last_seen", "last_heartbeat", "last_heartbeat_at"); s != "" {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return ago(a.cli.Now().Sub(t))
		}
		return s
	}
	if ms, ok := num(m, "last_heard_ms", "last_heard_unix_ms", "last_heard", "last_seen_ms", "last_heartbeat_ms"); ok {
		if ms > 1e11 { // epoch milliseconds, not an age
			return ago(a.cli.Now().Sub(time.UnixMilli(int64(ms))))
		}
		return ago(time.Duration(ms * float64(time.Millisecond)))
	}
	if ms, ok := num(m, "last_heard_ago_ms", "age_ms", "silent_ms"); ok && ms > 0 {
		return ago(time.Duration(ms * float64(time.Millisecond)))
	}
	return ""
}

func rtt(m map[string]any) string {
	ms, ok := num(m, "rtt_ms")
	if !ok {
		if conn, isObj := m["conn"].(map[string]any); isObj {
			ms, ok = num(conn, "rtt_ms")
		}
	}
	if !ok {
		return str(m, "rtt")
	}
	return time.Duration(ms * float64(time.Millisecond)).Round(10 * time.Microsecond).String()
}

// configsCell renders {"<server>": {revision/applied/current...}} as
// "github 12/12, fs 3/4*" — applied/current, * when they differ.
func configsCell(v any) string {
	servers, ok := v.(map[string]any)
	if !ok {
		return ""
	}
	var parts []string
	for _, name := range sortedKeys(servers) {
		parts = append(parts, name+" "+configCell(servers[name]))
	}
	return strings.Join(parts, ", ")
}

func configCell(v any) string {
	m, ok := v.(map[string]any)
	if !ok {
		if n, isNum := num(map[string]any{"n": v}, "n"); isNum {
			return revString(n)
		}
		return "?"
	}
	applied, hasApplied := num(m, "applied_revision", "revision", "applied_rev")
	current, hasCurrent := num(m, "current_revision", "current", "want_revision", "desired_revision", "latest_revision")
	s := "-"
	if hasApplied {
		s = revString(applied)
	}
	if hasCurrent {
		s += "/" + revString(current)
		if !hasApplied || applied != current {
			s += "*"
		}
	}
	if ok, isBool := m["applied"].(bool); isBool && !ok {
		s += " NOT APPLIED"
	}
	if stale, _ := m["stale"].(bool); stale {
		s += " stale"
	}
	for _, k := range []string{"error", "current_error"} {
		if e := str(m, k); e != "" {
			s += " (" + strings.TrimPrefix(e, "kvconfig: ") + ")"
		}
	}
	return s
}

func revString(f float64) string {
	if f == math.Trunc(f) && f >= 0 && f < 1<<53 {
		return strconv.FormatUint(uint64(f), 10)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

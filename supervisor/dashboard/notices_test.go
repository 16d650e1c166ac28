package dashboard

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/fleet"
)

// The fleet page's notices — invalid KV entries and roles no config names
// — are in /api/fleet and in the stream, sent again only when they change
// and cleared by an empty list; an agent's own warnings are in its detail
// (issue 12: "invalid KV entries never appear" on the dashboard).
func TestDashboardNotices(t *testing.T) {
	src := newFakeFleet()
	src.set("z1", fleet.StateHealthy, "coderz", 1)
	long := strings.Repeat("x", 2000)
	src.invalid = []fleet.InvalidEntry{
		{Bucket: "mcp_configs", Key: "global.github", Revision: 4, Error: `kvconfig: invalid mcp_configs "global.github" revision 4: field "timout": unknown field`},
		{Bucket: "mcp_configs", Key: "globl.jira", Revision: 5, Error: long},
	}
	src.roles = []kvconfig.RoleUse{{Role: "coderz", Agents: 1, Sample: []string{"z1"}}}
	ix := kvconfig.NewIndex()
	ix.ApplyAgent("z1", 1, kvconfig.OpPut, []byte(`{"role":"coderz"}`))
	ix.ApplyConfig("global.github", 2, kvconfig.OpPut, []byte(`{"url":"https://g.example/mcp"}`))
	ix.MarkReady(kvconfig.BucketConfigs)
	ix.MarkReady(kvconfig.BucketAgents)
	src.mu.Lock()
	a := src.agents["z1"]
	_, w := ix.RoleWarning("z1")
	a.Warnings = []string{w}
	src.agents["z1"] = a
	src.mu.Unlock()
	d := New(testDashConfig(5*time.Millisecond), src, func() *kvconfig.Index { return ix }, zerolog.New(zerolog.NewTestWriter(t)))
	mux := http.NewServeMux()
	d.Routes(mux)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	d.Start()
	t.Cleanup(d.Close)

	_, body := get(t, ts.URL+"/api/fleet")
	var fr struct {
		Notices notices `json:"notices"`
		Page    pageReply
	}
	if err := json.Unmarshal([]byte(body), &fr); err != nil {
		t.Fatal(err)
	}
	n := fr.Notices
	wantRole := `role "coderz" is named by no config in mcp_configs: agent z1 gets global configs only; check the role in mcp_agents`
	if len(n.Invalid) != 2 || n.Invalid[0].Key != "global.github" || n.Invalid[0].Revision != 4 || !strings.Contains(n.Invalid[0].Error, `field "timout"`) ||
		len(n.Invalid[1].Error) != maxInvalidError+len("...") || len(n.UnconfiguredRoles) != 1 || n.UnconfiguredRoles[0].Warning != wantRole {
		t.Fatalf("/api/fleet notices: %+v", n)
	}
	if rows := fr.Page.Rows; len(rows) != 1 || !reflect.DeepEqual(rows[0].Warnings, []string{w}) {
		t.Errorf("row warnings: %+v", rows)
	}

	frames, _, _ := openStream(t, ts.URL+"/events")
	f := waitFrame(t, frames, 2*time.Second, "first frame", func(*sseFrame) bool { return true })
	if f.msg.Notices == nil || len(f.msg.Notices.Invalid) != 2 || len(f.msg.Notices.UnconfiguredRoles) != 1 {
		t.Fatalf("first frame notices: %+v", f.msg.Notices)
	}
	after := f.msg.Seq
	f = waitFrame(t, frames, 2*time.Second, "quiet frame", func(f *sseFrame) bool { return f.msg.Seq > after })
	if f.msg.Notices != nil {
		t.Errorf("unchanged notices sent again: %+v", f.msg.Notices)
	}
	src.mu.Lock()
	src.invalid, src.roles = nil, nil
	src.mu.Unlock()
	f = waitFrame(t, frames, 2*time.Second, "cleared notices", func(f *sseFrame) bool { return f.msg.Notices != nil })
	if f.msg.Notices.Invalid == nil || len(f.msg.Notices.Invalid) != 0 || len(f.msg.Notices.UnconfiguredRoles) != 0 {
		t.Errorf("cleared notices: %+v", f.msg.Notices)
	}
	// An agent's own stream carries no fleet notices.
	agentFrames, _, _ := openStream(t, ts.URL+"/events?agent=z1")
	if f := waitFrame(t, agentFrames, 2*time.Second, "agent frame", func(*sseFrame) bool { return true }); f.msg.Notices != nil {
		t.Errorf("agent stream carries notices: %+v", f.msg.Notices)
	}

	var det agentDetail
	_, body = get(t, ts.URL+"/api/agent/z1")
	if err := json.Unmarshal([]byte(body), &det); err != nil || !reflect.DeepEqual(det.Warnings, []string{w}) {
		t.Errorf("agent z1 warnings %q (%v), want %q", det.Warnings, err, w)
	}
	_, body = get(t, ts.URL+"/api/agent/nobody")
	if err := json.Unmarshal([]byte(body), &det); err != nil || len(det.Warnings) != 1 || !strings.HasPrefix(det.Warnings[0], `agent "nobody" has no entry in mcp_agents`) {
		t.Errorf("agent nobody warnings %q (%v)", det.Warnings, err)
	}
}

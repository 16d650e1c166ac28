package supervisor

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/internal/natstest"
	"github.com/tether-dev/tether/kvconfig"
)

func TestReplyAllowed(t *testing.T) {
	for _, tc := range []struct {
		reply, agent string
		want         bool
	}{
		{"_INBOX.abc.1", "a7", true},    // an operator's CLI
		{"_INBOX_a7.abc.1", "a7", true}, // the agent's own inbox
		{"_INBOX_a7.hb", "a7", true},    // its own heartbeat inbox: harms only itself
		{"_INBOX_B.abc", "a7", false},   // another agent's inbox
		{"_INBOX_B.hb", "a7", false},    // another agent's heartbeat inbox
		{"_INBOX_B.abc", "", true},      // not agent-scoped: any valid private inbox
		{"_INBOX_x.>.abc", "", false},   // a wildcard
		{"_INBOX_x*y.abc", "", false},   // not a valid id
		{"_INBOX_a7", "a7", false},      // no token under the inbox
		{"_INBOX.", "", false},          // empty token
		{"_INBOX..x", "", false},        // empty token
		{"$KV.mcp_configs.agent.B.github", "a7", false},
		{"$KV.mcp_leader.supervisor", "", false},
		{"$JS.API.STREAM.DELETE.KV_mcp_configs", "", false},
		{"mcp.v1.hb.B", "a7", false},
		{"mcp.v1.cmd.B", "", false},
		{"work.tasks", "", false},
		{"", "", false},
		{"_INBOX.a b", "", false},
	} {
		if got := replyAllowed(tc.reply, tc.agent, "mcp"); got != tc.want {
			t.Errorf("replyAllowed(%q, %q) = %v, want %v", tc.reply, tc.agent, got, tc.want)
		}
	}
}

// TestReplySubjectRule: agent a7 sends its own resolve with hostile reply
// subjects. None is answered (a subscriber on each sees nothing), each is
// counted, and a7's own inbox and an operator's _INBOX. still get answers.
func TestReplySubjectRule(t *testing.T) {
	srv := natstest.RunServer(t)
	s := startSupervisor(t, testConfig(t, srv))
	put(t, s, kvconfig.BucketConfigs, "global.github", `{"url":"https://secret-token@g.example/mcp"}`)
	waitRev(t, s, "a7", "github", 1)
	spy := srv.Connect()
	leaks := make(chan *nats.Msg, 64)
	for _, subject := range []string{"$KV.>", "mcp.v1.>", "_INBOX_B.>", "$JS.>", "work.>"} {
		if _, err := spy.ChanSubscribe(subject, leaks); err != nil {
			t.Fatal(err)
		}
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	nc := srv.Connect()
	hostile := []string{"$KV.mcp_configs.agent.B.github", "$KV.mcp_agents.B", "$KV.mcp_leader.supervisor",
		"mcp.v1.hb.B", "mcp.v1.cmd.B", "_INBOX_B.hb", "_INBOX_B.x1", "$JS.API.STREAM.INFO.KV_mcp_configs", "work.B"}
	for _, reply := range hostile {
		if err := nc.PublishRequest(subj.Resolve("a7", "github"), reply, nil); err != nil {
			t.Fatal(err)
		}
		if err := nc.PublishRequest(subj.ResolveAll("a7"), reply, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Handlers take requests in order: once these are answered, every
	// hostile one before them was handled.
	for _, inbox := range []string{"_INBOX_a7.ok", "_INBOX.op"} {
		sub, err := nc.SubscribeSync(inbox)
		if err != nil {
			t.Fatal(err)
		}
		for _, subject := range []string{subj.Resolve("a7", "github"), subj.ResolveAll("a7")} {
			if err := nc.PublishRequest(subject, inbox, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := sub.NextMsg(5 * time.Second); err != nil {
				t.Fatalf("%s on %s: %v", subject, inbox, err)
			}
		}
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case m := <-leaks:
			if m.Subject == subj.Resolve("a7", "github") || m.Subject == subj.ResolveAll("a7") {
				continue // the requests themselves
			}
			if m.Reply != "" || strings.HasPrefix(m.Subject, "$JS.EVENT.") {
				// The supervisor's own JetStream requests (watcher checks,
				// which carry a reply subject) and their advisories: a
				// leaked answer is a reply, published without one.
				continue
			}
			t.Errorf("a reply reached %s: %.80s", m.Subject, m.Data)
			continue
		default:
		}
		break
	}
	if refused, want := metricSum(t, s, "tether_replies_refused_total"), float64(2*len(hostile)); refused != want {
		t.Errorf("tether_replies_refused_total = %v, want %v", refused, want)
	}
	t.Logf("%d hostile reply subjects refused, none answered", 2*len(hostile))
}

// metricSum sums every sample of a counter family on s's registry.
func metricSum(t *testing.T, s *Supervisor, name string) float64 {
	t.Helper()
	fams, err := s.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range fams {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

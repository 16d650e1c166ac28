package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/natstest"
)

// rawAgent heartbeats by hand every interval and answers probes in its
// heartbeats (probe_ack) unless deaf, the way a zombie's dead command
// subscription ignores them.
type rawAgent struct {
	deaf  atomic.Bool
	nonce atomic.Value // string: the latest probe heard
	sub   *nats.Subscription
	stop  chan struct{}
	done  chan struct{}
}

func startRawAgent(t *testing.T, nc *nats.Conn, id string, interval time.Duration) *rawAgent {
	a := &rawAgent{stop: make(chan struct{}), done: make(chan struct{})}
	a.nonce.Store("")
	sub, err := nc.Subscribe(subj.Command(id), func(m *nats.Msg) {
		var c agentproto.Command
		if json.Unmarshal(m.Data, &c) == nil && c.Type == agentproto.CmdProbe && !a.deaf.Load() {
			a.nonce.Store(c.Nonce)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	a.sub = sub
	go func() {
		defer close(a.done)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for seq := 1; ; seq++ {
			body := fmt.Sprintf(`{"agent":%q,"instance":"%s-i1","seq":%d,"interval_ms":%d,"probe_ack":%q}`,
				id, id, seq, interval.Milliseconds(), a.nonce.Load().(string))
			_ = nc.PublishMsg(&nats.Msg{Subject: subj.Heartbeat(id), Reply: agentproto.HeartbeatReply(id), Data: []byte(body)})
			select {
			case <-a.stop:
				return
			case <-tk.C:
			}
		}
	}()
	t.Cleanup(a.Stop)
	return a
}

func (a *rawAgent) Stop() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
		_ = a.sub.Unsubscribe()
	}
	<-a.done
}

// streamLines opens an SSE stream and sends its data lines on a channel
// that is closed when the stream ends.
func streamLines(t *testing.T, u string) <-chan string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		resp.Body.Close()
		t.Fatalf("%s: %d %s", u, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ch := make(chan string, 1024)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if d, ok := strings.CutPrefix(line, "data: "); ok {
				ch <- d
			}
		}
	}()
	return ch
}

// waitLine waits for a data line containing every one of want.
func waitLine(t *testing.T, lines <-chan string, within time.Duration, want ...string) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stream ended before a frame with %q", want)
			}
			all := true
			for _, w := range want {
				all = all && strings.Contains(l, w)
			}
			if all {
				return
			}
		case <-deadline:
			t.Fatalf("no frame with %q within %v", want, within)
		}
	}
}

// The dashboard wired into a real supervisor: an agent turns zombie (its
// probes go unanswered) and recovers on the event stream, and Close and
// Drain end open streams instead of waiting for them.
func TestDashboardWiredIntoSupervisor(t *testing.T) {
	const interval = 20 * time.Millisecond
	srv := natstest.RunServer(t)
	nc := srv.Connect()
	for _, drain := range []bool{false, true} {
		id := "dz-close"
		if drain {
			id = "dz-drain"
		}
		cfg := fastFleetConfig(t, srv, interval)
		cfg.HTTPAddr = "127.0.0.1:0" // the dashboard is what this tests
		s := startSupervisor(t, cfg)
		registerAgents(t, s, id)
		a := startRawAgent(t, nc, id, interval)
		base := "http://" + s.HTTPAddr()
		resp, err := http.Get(base + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "/static/fleet.js") {
			t.Fatalf("GET /: %d", resp.StatusCode)
		}
		lines := streamLines(t, base+"/events?agent="+id)
		waitLine(t, lines, 3*time.Second, `"id":"`+id+`"`, `"state":"healthy"`)
		if !drain {
			a.deaf.Store(true)
			waitLine(t, lines, 5*time.Second, `"from":"healthy","to":"zombie"`)
			a.deaf.Store(false)
			waitLine(t, lines, 5*time.Second, `"from":"zombie","to":"healthy"`)
		}
		start := time.Now()
		if drain {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := s.Drain(ctx); err != nil {
				t.Errorf("drain with an open stream: %v", err)
			}
			cancel()
		} else {
			s.Close()
		}
		for range lines { // the stream must end
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("drain=%v took %v with an open stream", drain, took)
		}
		a.Stop()
	}
}

// registerAgents puts ids into s's role registry and waits until s admits
// them (only registered agents are tracked by default).
func registerAgents(t *testing.T, s *Supervisor, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := s.Buckets().Agents.Put(context.Background(), id, []byte(`{"role":"dev"}`)); err != nil {
			t.Fatal(err)
		}
	}
	natstest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		for _, id := range ids {
			if !s.Index().Registered(id) {
				return fmt.Errorf("%s not registered yet", id)
			}
		}
		return nil
	})
}

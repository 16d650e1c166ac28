package natstest

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// proxied starts a core-NATS server with an echo responder connected
// directly, and a proxy in front of it.
func proxied(t *testing.T) (*Server, *Proxy) {
	t.Helper()
	s := RunServer(t, WithoutJetStream())
	nc := s.Connect()
	if _, err := nc.Subscribe("echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s, NewProxy(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)))
}

func mustEcho(t *testing.T, nc *nats.Conn) {
	t.Helper()
	m, err := nc.Request("echo", []byte("hi"), 2*time.Second)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	if string(m.Data) != "hi" {
		t.Fatalf("reply %q, want %q", m.Data, "hi")
	}
}

// events counts a client's disconnects and reconnects and stamps the first
// disconnect.
type events struct {
	disc, reconn atomic.Int32
	firstDisc    atomic.Int64 // unix nanos
}

func (e *events) options() []nats.Option {
	return []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(20 * time.Millisecond),
		nats.DisconnectErrHandler(func(*nats.Conn, error) {
			e.firstDisc.CompareAndSwap(0, time.Now().UnixNano())
			e.disc.Add(1)
		}),
		nats.ReconnectHandler(func(*nats.Conn) { e.reconn.Add(1) }),
	}
}

func (e *events) disconnected() error {
	if e.disc.Load() == 0 {
		return errors.New("no disconnect yet")
	}
	return nil
}

func reconnected(nc *nats.Conn, e *events) func() error {
	return func() error {
		if e.reconn.Load() == 0 || !nc.IsConnected() {
			return fmt.Errorf("not reconnected (status %v)", nc.Status())
		}
		return nil
	}
}

func TestProxyPass(t *testing.T) {
	_, p := proxied(t)
	if want := "nats://" + p.Addr(); p.URL() != want {
		t.Fatalf("URL %q, want %q", p.URL(), want)
	}
	nc := Connect(t, p.URL())
	mustEcho(t, nc)
	if n := p.Conns(); n != 1 {
		t.Fatalf("Conns %d, want 1", n)
	}
	nc.Close()
	CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := p.Conns(); n != 0 {
			return fmt.Errorf("Conns %d after client close, want 0", n)
		}
		return nil
	})
	p.Close()
	p.Close() // idempotent
}

func TestProxyCut(t *testing.T) {
	_, p := proxied(t)
	var ev events
	nc := Connect(t, p.URL(), ev.options()...)
	mustEcho(t, nc)

	p.Cut()
	CheckFor(t, 5*time.Second, 10*time.Millisecond, ev.disconnected)
	if n := p.Conns(); n != 0 {
		t.Fatalf("Conns %d after Cut, want 0", n)
	}
	// While cut, a new connection is accepted and closed at once.
	c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var ne net.Error
	if _, err := c.Read(make([]byte, 1)); err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("read on a connection made while cut: %v, want EOF", err)
	}
	if nc.IsConnected() {
		t.Fatal("client connected while cut")
	}

	p.Pass()
	CheckFor(t, 5*time.Second, 10*time.Millisecond, reconnected(nc, &ev))
	mustEcho(t, nc)
}

func TestProxyBlackHole(t *testing.T) {
	s, p := proxied(t)
	var ev events
	opts := append(ev.options(),
		nats.PingInterval(200*time.Millisecond),
		nats.MaxPingsOutstanding(2),
		nats.Timeout(250*time.Millisecond), // held reconnect attempts give up fast
	)
	nc := Connect(t, p.URL(), opts...)
	mustEcho(t, nc)

	start := time.Now()
	p.BlackHole()
	if _, err := nc.Request("echo", []byte("x"), 100*time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("request while black-holed: %v, want timeout", err)
	}
	// Stale after MaxPingsOutstanding+1 intervals (~600ms); allow slack.
	CheckFor(t, 3*time.Second, 10*time.Millisecond, ev.disconnected)
	t.Logf("black hole detected after %v", time.Duration(ev.firstDisc.Load()-start.UnixNano()))
	// Nothing was closed: the server still has the stale client (plus the
	// responder), since held reconnect attempts never reach it.
	if n := s.NATS().NumClients(); n != 2 {
		t.Fatalf("server clients %d while black-holed, want 2", n)
	}

	p.Pass()
	CheckFor(t, 5*time.Second, 10*time.Millisecond, reconnected(nc, &ev))
	mustEcho(t, nc)
	if n := p.Conns(); n < 2 {
		t.Fatalf("Conns %d, want the held dead link plus the live one", n)
	}

	// Cut releases the held links; the server sees the stale client go.
	p.Cut()
	CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := s.NATS().NumClients(); n != 1 {
			return fmt.Errorf("server clients %d after Cut, want 1", n)
		}
		return nil
	})
}

func TestProxyLatency(t *testing.T) {
	_, p := proxied(t)
	nc := Connect(t, p.URL())
	base, err := nc.RTT()
	if err != nil {
		t.Fatal(err)
	}

	const lat = 50 * time.Millisecond
	p.SetLatency(lat)
	rtt, err := nc.RTT()
	if err != nil {
		t.Fatal(err)
	}
	// PING and PONG are each delayed once.
	if rtt < 2*lat {
		t.Fatalf("RTT %v with latency %v, want >= %v", rtt, lat, 2*lat)
	}

	// Order is kept in both directions.
	sub, err := nc.SubscribeSync("seq")
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		if err := nc.Publish("seq", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if got := string(m.Data); got != strconv.Itoa(i) {
			t.Fatalf("message %d is %q: out of order", i, got)
		}
	}

	p.SetLatency(0)
	after, err := nc.RTT()
	if err != nil {
		t.Fatal(err)
	}
	if after >= lat {
		t.Fatalf("RTT %v after latency removed, want < %v", after, lat)
	}
	t.Logf("RTT: base %v, with %v latency %v, after reset %v", base, lat, rtt, after)
}

// TestProxyHoldAfter: once the client's bytes carrying the marker reach
// the server, the client's later bytes wait until Release and then arrive
// in order; the server's bytes to the client flow throughout.
func TestProxyHoldAfter(t *testing.T) {
	s, p := proxied(t)
	direct := s.Connect()
	seen, err := direct.SubscribeSync("held.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.Flush(); err != nil {
		t.Fatal(err)
	}
	nc := Connect(t, p.URL())
	down, err := nc.SubscribeSync("down")
	if err != nil {
		t.Fatal(err)
	}
	mustEcho(t, nc) // the subscription is in place

	p.HoldAfter([]byte("held.mark"))
	for _, subj := range []string{"held.mark", "held.after.1", "held.after.2"} {
		if err := nc.Publish(subj, nil); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := seen.NextMsg(2 * time.Second); err != nil || m.Subject != "held.mark" {
		t.Fatalf("the marker: %v %v", m, err)
	}
	// A PING is held too, so a flush cannot complete while the hold lasts.
	if err := nc.FlushTimeout(100 * time.Millisecond); err == nil {
		t.Fatal("a flush completed through a hold")
	}
	// The publishes after the marker went out in the same write as it.
	if n, _, _ := seen.Pending(); n != 0 {
		t.Fatalf("%d messages after the marker got through the hold", n)
	}
	if err := direct.Publish("down", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := down.NextMsg(2 * time.Second); err != nil {
		t.Fatalf("server -> client during the hold: %v", err)
	}
	p.Release()
	for _, want := range []string{"held.after.1", "held.after.2"} {
		m, err := seen.NextMsg(2 * time.Second)
		if err != nil || m.Subject != want {
			t.Fatalf("after Release: %v %v, want %s", m, err, want)
		}
	}
	mustEcho(t, nc)
}

// TestProxyHoldAfterSplitMessage: the marked message written in two parts
// (its payload in a later write) goes through whole before the hold
// starts; what follows it waits for Release.
func TestProxyHoldAfterSplitMessage(t *testing.T) {
	s, p := proxied(t)
	direct := s.Connect()
	seen, err := direct.SubscribeSync("held.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.Flush(); err != nil {
		t.Fatal(err)
	}
	p.HoldAfter([]byte("held.mark"))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4096)
	if _, err := c.Read(buf); err != nil { // INFO
		t.Fatal(err)
	}
	for _, part := range []string{"CONNECT {\"verbose\":false}\r\nPUB held.mark 5\r\nhel", "lo\r\nPUB held.after 0\r\n\r\n"} {
		if _, err := c.Write([]byte(part)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // separate reads at the proxy
	}
	m, err := seen.NextMsg(2 * time.Second)
	if err != nil || m.Subject != "held.mark" || string(m.Data) != "hello" {
		t.Fatalf("the marked message: %v %v", m, err)
	}
	if _, err := seen.NextMsg(100 * time.Millisecond); err == nil {
		t.Fatal("the message after the marked one got through the hold")
	}
	p.Release()
	if m, err := seen.NextMsg(2 * time.Second); err != nil || m.Subject != "held.after" {
		t.Fatalf("after Release: %v %v", m, err)
	}
}

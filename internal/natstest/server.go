package natstest

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// readyTimeout bounds how long a server may take to accept clients.
const readyTimeout = 10 * time.Second

// Server is a real embedded nats-server with JetStream on a loopback port.
// It can be shut down and restarted on the same port with the same store.
type Server struct {
	t     testing.TB
	opts  server.Options
	srv   *server.Server
	up    bool
	Port  int
	Store string
}

// Option adjusts the server options before start.
type Option func(*server.Options)

// WithPingInterval makes the server ping its clients every d.
func WithPingInterval(d time.Duration) Option {
	return func(o *server.Options) { o.PingInterval = d; o.MaxPingsOut = 2 }
}

// WithSyncAlways fsyncs every JetStream write before acknowledging it, as
// the supervisor's embedded server does in production: benchmarks of
// anything that writes a bucket use it.
func WithSyncAlways() Option { return func(o *server.Options) { o.SyncAlways = true } }

// WithoutJetStream runs a core-NATS-only server.
func WithoutJetStream() Option { return func(o *server.Options) { o.JetStream = false } }

// WithOptions lets a test change any server option.
func WithOptions(f func(*server.Options)) Option { return f }

// RunServer starts a JetStream-enabled server on 127.0.0.1 with a random
// port and a t.TempDir() store; it is shut down on t.Cleanup.
func RunServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	o := server.Options{
		ServerName: "natstest",
		Host:       "127.0.0.1",
		Port:       -1,
		NoLog:      true,
		NoSigs:     true,
		JetStream:  true,
		StoreDir:   filepath.Join(t.TempDir(), "js"),
		HTTPPort:   0,
		MaxPayload: 1 << 20,
	}
	for _, f := range opts {
		f(&o)
	}
	s := &Server{t: t, opts: o, Store: o.StoreDir}
	s.start()
	s.opts.Port = s.Port // restarts keep the port
	t.Cleanup(s.Shutdown)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	o := s.opts
	srv, err := server.NewServer(&o)
	if err != nil {
		s.t.Fatalf("natstest: new server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		s.t.Fatalf("natstest: server on port %d not ready within %v", o.Port, readyTimeout)
	}
	s.srv = srv
	s.up = true
	s.Port = srv.Addr().(*net.TCPAddr).Port
}

// URL is the client URL, nats://127.0.0.1:<port>.
func (s *Server) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(s.Port) }

// NATS returns the underlying server (nil while shut down).
func (s *Server) NATS() *server.Server {
	if !s.up {
		return nil
	}
	return s.srv
}

// Shutdown stops the server and waits for it; safe to call twice.
func (s *Server) Shutdown() {
	if !s.up {
		return
	}
	s.up = false
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// Start starts a shut-down server again on the same port and store.
func (s *Server) Start() {
	s.t.Helper()
	if s.up {
		return
	}
	// The port may linger briefly after shutdown; retry for a bounded time.
	deadline := time.Now().Add(readyTimeout)
	for {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)))
		if err == nil {
			ln.Close()
			break
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("natstest: port %d still busy: %v", s.Port, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.start()
}

// Reload changes the running server's options with f (users and
// permissions, say) through the server's config reload, as an operator's
// `nats-server --signal reload` does; a later restart keeps them.
//
// Under -race, keep direct gets (KV Get on a bucket with AllowDirect) away
// from a reload: nats-server v2.15.2 reads its options without their lock
// when it serves one (stream.go, getDirectRequest), a data race.
func (s *Server) Reload(f func(*server.Options)) {
	s.t.Helper()
	o := s.opts
	f(&o)
	if err := s.NATS().ReloadOptions(&o); err != nil {
		s.t.Fatalf("natstest: reload: %v", err)
	}
	s.opts = o
}

// Restart shuts the server down and starts it again on the same port and store.
func (s *Server) Restart() {
	s.t.Helper()
	s.Shutdown()
	s.Start()
}

// RestartAwait restarts the server like Restart and then waits until every
// given client has reconnected to the new process.
//
// Restart alone is not enough before a client writes: the server closes each
// client socket at shutdown, but a client notices only when its read loop
// sees the close. A request or publish written in between still reports
// CONNECTED, goes into the dead socket and is lost — core NATS is at most
// once — so a JetStream call made then waits out its whole timeout. Product
// code bounds every attempt and retries; a test that means "write right
// after the restart" waits for its writers here first.
func (s *Server) RestartAwait(conns ...*nats.Conn) {
	s.t.Helper()
	before := make([]uint64, len(conns))
	for i, nc := range conns {
		before[i] = nc.Stats().Reconnects
	}
	s.Restart()
	CheckFor(s.t, readyTimeout, 2*time.Millisecond, func() error {
		for i, nc := range conns {
			if nc.Stats().Reconnects == before[i] || !nc.IsConnected() {
				return fmt.Errorf("client %d not reconnected yet (%v, %d reconnects)", i, nc.Status(), nc.Stats().Reconnects)
			}
		}
		return nil
	})
}

// Connect opens a client connection closed on t.Cleanup.
func (s *Server) Connect(opts ...nats.Option) *nats.Conn {
	return Connect(s.t, s.URL(), opts...)
}

// Connect opens a client connection to url, closed on t.Cleanup.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("natstest: connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Cluster is a 3-node (or n-node) JetStream cluster on loopback.
type Cluster struct {
	Servers []*Server
}

// RunCluster starts n JetStream servers routed into one cluster and waits
// until JetStream has a meta leader. Options apply to every node, after
// the cluster settings (e.g. WithOptions setting Cluster.NoAdvertise, so
// clients behind a Proxy do not learn the nodes' own URLs).
func RunCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	routes := ""
	for i, p := range ports {
		if i > 0 {
			routes += ","
		}
		routes += fmt.Sprintf("nats-route://127.0.0.1:%d", p)
	}
	c := &Cluster{}
	for i := 0; i < n; i++ {
		i := i
		s := RunServer(t, append([]Option{WithOptions(func(o *server.Options) {
			o.ServerName = fmt.Sprintf("n%d", i)
			o.Cluster.Name = "tether"
			o.Cluster.Host = "127.0.0.1"
			o.Cluster.Port = ports[i]
			o.Routes = server.RoutesFromStr(routes)
		})}, opts...)...)
		c.Servers = append(c.Servers, s)
	}
	c.WaitJetStream(t)
	return c
}

// WaitJetStream waits until every running node agrees on a meta leader
// and the leader counts every running node as a peer it can place
// streams on (online, with JetStream, its stats received). Without the
// last condition an R3 create right after RunCluster could fail with "no
// suitable peers for placement": the leader had not yet heard from one
// node (2 of 60 starts under load).
func (c *Cluster) WaitJetStream(t testing.TB) {
	t.Helper()
	CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		running := 0
		var leader *server.Server
		for _, s := range c.Servers {
			if s.NATS() == nil {
				continue
			}
			running++
			if !s.NATS().JetStreamIsCurrent() {
				return fmt.Errorf("node %s: JetStream not current", s.opts.ServerName)
			}
			if s.NATS().JetStreamIsLeader() {
				leader = s.NATS()
			}
		}
		if leader == nil {
			return fmt.Errorf("no meta leader")
		}
		if peers := leader.JetStreamClusterPeers(); len(peers) < running {
			return fmt.Errorf("meta leader %s can place on %v, %d of %d running nodes", leader.Name(), peers, len(peers), running)
		}
		return nil
	})
}

// URLs is a comma-separated list of every node's client URL.
func (c *Cluster) URLs() string {
	u := ""
	for i, s := range c.Servers {
		if i > 0 {
			u += ","
		}
		u += s.URL()
	}
	return u
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// CheckFor polls fn every sleep until it returns nil or total elapses, then
// fails the test with fn's last error. The loop is bounded in time and count.
func CheckFor(t testing.TB, total, sleep time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for i := 0; ; i++ {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) || i > int(total/sleep)+10 {
			t.Fatalf("natstest: condition not met within %v: %v", total, err)
		}
		time.Sleep(sleep)
	}
}

// RunPermissionServer runs a server with two users, password "pw": "sup"
// may do anything, "agent" may publish and subscribe anywhere until
// deny(true) reloads the server's config to forbid it subscribing to
// subject — the way an operator's permission change makes the server drop
// a live subscription. deny(false) allows it again.
func RunPermissionServer(t testing.TB, subject string, opts ...Option) (s *Server, deny func(bool)) {
	t.Helper()
	users := func(deny bool) []*server.User {
		p := &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}}}
		if deny {
			p.Subscribe.Deny = []string{subject}
		}
		return []*server.User{{Username: "agent", Password: "pw", Permissions: p}, {Username: "sup", Password: "pw"}}
	}
	var base server.Options
	opts = append(opts, WithOptions(func(o *server.Options) {
		o.Users = users(false)
		base = *o
	}))
	s = RunServer(t, opts...)
	return s, func(d bool) {
		o := base
		o.Users = users(d)
		if err := s.NATS().ReloadOptions(&o); err != nil {
			t.Fatalf("natstest: reload permissions: %v", err)
		}
	}
}

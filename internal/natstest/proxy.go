package natstest

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy tuning. They bound memory and blocking; none changes the semantics.
const (
	// proxyChunkSize is the largest chunk, in bytes, read and forwarded at once.
	proxyChunkSize = 32 << 10
	// proxyQueueLen is how many chunks may wait per direction for their
	// latency to pass before the reader stops reading (back-pressure).
	proxyQueueLen = 256
	// proxyDialTimeout bounds dialing the target for a new connection.
	proxyDialTimeout = 2 * time.Second
)

type proxyMode int

const (
	modePass proxyMode = iota
	modeCut
	modeBlackHole
)

// Proxy is a TCP fault-injection proxy on 127.0.0.1 in front of one target.
// Each accepted client connection is a link to its own target connection.
// The mode decides what happens to links, and applies until the next mode
// call:
//
//   - Pass (the initial mode): new connections are forwarded. Links already
//     black-holed stay dead; Pass never revives them.
//   - Cut: every link (live or black-holed) is closed on both sides now, and
//     each new connection is accepted and closed at once, so a client sees
//     EOF straight away, as after a refused connect. The listener stays bound
//     so the port cannot be taken by anyone else.
//   - BlackHole: every link, and every new connection, is held open but
//     bytes in both directions are silently dropped and nothing is closed,
//     even if one side closes its end: like a dead network path. New
//     connections are not dialed through to the target. Only Cut or Close
//     releases black-holed links, so a client must detect them itself (pings).
//
// SetLatency is independent of the mode. A live link closes both sides when
// either side closes or fails; a dial failure closes the client at once.
type Proxy struct {
	ln      net.Listener
	target  string
	ctx     context.Context // cancelled by Close; aborts dials
	cancel  context.CancelFunc
	wg      sync.WaitGroup // every goroutine the proxy starts
	latency atomic.Int64   // time.Duration added to each chunk

	mu     sync.Mutex
	mode   proxyMode
	closed bool
	links  map[*link]struct{}

	holdMu    sync.Mutex
	holdAfter []byte        // marker set by HoldAfter, cleared once seen
	held      chan struct{} // non-nil while client bytes are held; closed by Release
}

// link is one proxied connection: client side and target side.
type link struct {
	client net.Conn
	server net.Conn // nil when accepted while black-holed
	dead   atomic.Bool
	done   chan struct{} // closed by close
	once   sync.Once
}

func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		_ = l.client.Close()
		if l.server != nil {
			_ = l.server.Close()
		}
	})
}

// chunk is bytes read from one side and due to be written at due.
type chunk struct {
	data []byte
	due  time.Time
}

// NewProxy starts a proxy on 127.0.0.1 with a random port forwarding to
// target (host:port) in Pass mode. It is closed on t.Cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: proxy listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{ln: ln, target: target, ctx: ctx, cancel: cancel, links: map[*link]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(p.Close)
	return p
}

// HoldAfter arms a hold: once the client's protocol message (PUB or HPUB)
// whose subject carries marker has been written to the target, every
// client -> target byte of every link after it, including the rest of the
// same write, waits (in order, nothing dropped) until Release. Arming it
// again ends a hold in force. Bytes from the
// target still flow. It makes "nothing reaches the server between this
// request and the test's next step" exact, where a latency would only make
// it likely.
func (p *Proxy) HoldAfter(marker []byte) {
	p.holdMu.Lock()
	if p.held != nil { // a hold in force ends: one at a time
		close(p.held)
		p.held = nil
	}
	p.holdAfter = bytes.Clone(marker)
	p.holdMu.Unlock()
}

// Release lets held client bytes through and disarms HoldAfter.
func (p *Proxy) Release() {
	p.holdMu.Lock()
	if p.held != nil {
		close(p.held)
		p.held = nil
	}
	p.holdAfter = nil
	p.holdMu.Unlock()
}

// holding returns the channel that closes when held client bytes may go,
// or nil when they may go now.
func (p *Proxy) holding() chan struct{} {
	p.holdMu.Lock()
	defer p.holdMu.Unlock()
	return p.held
}

// holdScan is one link's search for the armed marker.
type holdScan struct {
	tail   []byte // the last bytes seen, as a marker may straddle two reads
	marked []byte // from the marker on, once found, until its message is whole
}

// scan looks at data, the next client bytes of the link. Once the marker
// has been seen and the protocol message carrying it (PUB or HPUB with
// its payload, the marker in its subject) is whole, it starts the hold and
// returns where in data the held bytes begin, so that requests written in
// the same burst are held too; until then it returns -1.
func (p *Proxy) scan(st *holdScan, data []byte) int {
	if st.marked == nil {
		p.holdMu.Lock()
		m := p.holdAfter
		if len(m) == 0 {
			p.holdMu.Unlock()
			st.tail = nil
			return -1
		}
		buf := append(st.tail, data...)
		i := bytes.Index(buf, m)
		if i < 0 {
			p.holdMu.Unlock()
			st.tail = bytes.Clone(buf[max(0, len(buf)-(len(m)-1)):])
			return -1
		}
		p.holdAfter, st.tail = nil, nil // this link has it: disarmed for the others
		p.holdMu.Unlock()
		st.marked = bytes.Clone(buf[i:])
	} else {
		st.marked = append(st.marked, data...)
	}
	eol := bytes.Index(st.marked, []byte("\r\n"))
	if eol < 0 {
		return -1 // the line is not whole yet
	}
	end := eol + 2 // the line alone, when its last field is not a size
	if f := bytes.Fields(st.marked[:eol]); len(f) > 0 {
		if size, err := strconv.Atoi(string(f[len(f)-1])); err == nil && size >= 0 {
			end += size + 2
		}
	}
	if len(st.marked) < end {
		return -1 // the payload is not whole yet
	}
	cut := len(data) - (len(st.marked) - end)
	st.marked = nil
	p.holdMu.Lock()
	p.held = make(chan struct{})
	p.holdMu.Unlock()
	return max(0, cut)
}

// Addr is the proxy's listen address, 127.0.0.1:<port>.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is the client URL, nats://127.0.0.1:<port>.
func (p *Proxy) URL() string { return "nats://" + p.Addr() }

// Pass forwards new connections again. Black-holed links stay dead.
func (p *Proxy) Pass() { p.setMode(modePass) }

// Cut closes every link now and closes new connections as soon as they are
// accepted, until another mode is set.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.mode = modeCut
	links := p.takeLinks()
	p.mu.Unlock()
	for _, l := range links {
		l.close()
	}
}

// BlackHole silently drops all bytes on every current and new link while
// holding them open, until Cut or Close. Chunks already waiting out their
// latency are dropped too.
func (p *Proxy) BlackHole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = modeBlackHole
	for l := range p.links {
		l.dead.Store(true)
	}
}

// SetLatency delays every chunk forwarded in either direction by d from the
// moment it is read, on current and new links. Order within a direction is
// kept: a chunk is never written before an earlier one. Zero removes delay.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// Conns is how many links the proxy holds open: live ones and black-holed
// ones (including those whose client has since gone).
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Close stops listening, closes every link and waits for every goroutine
// the proxy started. It is safe to call more than once.
func (p *Proxy) Close() {
	p.mu.Lock()
	first := !p.closed
	p.closed = true
	links := p.takeLinks()
	p.mu.Unlock()
	if first {
		_ = p.ln.Close()
		p.cancel()
	}
	for _, l := range links {
		l.close()
	}
	p.wg.Wait()
}

func (p *Proxy) setMode(m proxyMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
}

// takeLinks empties the link set and returns its links; p.mu must be held.
func (p *Proxy) takeLinks() []*link {
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	clear(p.links)
	return links
}

// accept runs until the listener is closed (or fails).
func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

// serve sets up a link for client connection c and pumps client -> target.
func (p *Proxy) serve(c net.Conn) {
	l := &link{client: c, done: make(chan struct{})}
	p.mu.Lock()
	mode := p.mode
	p.mu.Unlock()
	switch mode {
	case modeCut:
		_ = c.Close()
		return
	case modeBlackHole:
		l.dead.Store(true)
	case modePass:
		d := net.Dialer{Timeout: proxyDialTimeout}
		s, err := d.DialContext(p.ctx, "tcp", p.target)
		if err != nil {
			_ = c.Close()
			return
		}
		l.server = s
	}
	// The mode may have changed while dialing: apply the current one.
	p.mu.Lock()
	if p.closed || p.mode == modeCut {
		p.mu.Unlock()
		l.close()
		return
	}
	if p.mode == modeBlackHole {
		l.dead.Store(true)
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()

	if l.server != nil {
		p.wg.Go(func() { p.pipe(l, l.server, l.client, false) })
	}
	p.pipe(l, l.client, l.server, true) // server nil only when dead: nothing is written
}

// pipe reads src until it fails and queues each chunk for a writer that
// delivers them to dst in order once their latency has passed.
func (p *Proxy) pipe(l *link, src, dst net.Conn, fromClient bool) {
	ch := make(chan chunk, proxyQueueLen)
	p.wg.Go(func() { p.deliver(l, dst, ch, fromClient) })
	defer close(ch)
	buf := make([]byte, proxyChunkSize)
	for {
		n, err := src.Read(buf)
		if n > 0 && !l.dead.Load() {
			ch <- chunk{data: bytes.Clone(buf[:n]), due: time.Now().Add(time.Duration(p.latency.Load()))}
		}
		if err != nil {
			return
		}
	}
}

// deliver writes queued chunks to dst when due, dropping them once the link
// is dead or closed; client bytes also wait out a hold (HoldAfter). When
// the reader ends, a live link is closed; a dead one is held until Cut or
// Close.
func (p *Proxy) deliver(l *link, dst net.Conn, ch <-chan chunk, fromClient bool) {
	var st holdScan
	for c := range ch {
		if wait := time.Until(c.due); wait > 0 {
			select {
			case <-time.After(wait):
			case <-l.done:
			}
		}
		for data := c.data; len(data) > 0 && !l.dead.Load(); {
			n := len(data)
			if fromClient {
				if held := p.holding(); held != nil {
					select {
					case <-held:
					case <-l.done:
					}
					if l.dead.Load() {
						break
					}
				}
				if cut := p.scan(&st, data); cut >= 0 {
					n = cut
				}
			}
			if _, err := dst.Write(data[:n]); err != nil {
				p.drop(l)
				break
			}
			data = data[n:]
		}
	}
	if !l.dead.Load() {
		p.drop(l)
	}
}

// drop closes link l and forgets it.
func (p *Proxy) drop(l *link) {
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
	l.close()
}

package mcp

import (
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// delivery records, for one attempt, whether its request may have reached
// the server. The attempt's context carries it down to the transport: the
// SDK hands the context of CallTool to the connection's Write and, for
// HTTP, to the POST it makes, so the signal is the transport's own, not a
// guess from the error text.
//
//   - HTTP/SSE: the request may have run once net/http reports the whole
//     request written (httptrace WroteRequest without error), unless the
//     server then answered 404, 429 or 503, which an MCP server (or a
//     proxy in front of it) sends instead of running a request. A 2xx, any
//     other status, or an error after the request was written (reset, EOF,
//     timeout while waiting for the response) may have run.
//   - stdio: the request may have run once it was written to the
//     process's stdin (a failed write leaves at most a partial line, which
//     the server cannot parse).
type delivery struct {
	ran atomic.Bool // the request may have reached the server
	// fresh sends the request on a new connection: a call that must not
	// run twice never rides a kept-alive connection the server may have
	// closed just before (its EOF would be indistinguishable from a crash
	// mid-call, and the call would end OutcomeUnknown for nothing).
	fresh bool

	mu         sync.Mutex
	status     int    // the latest non-2xx HTTP status, 0 if none
	retryAfter string // its Retry-After header
}

type deliveryKey struct{}

func withDelivery(ctx context.Context, d *delivery) context.Context {
	return context.WithValue(ctx, deliveryKey{}, d)
}

func deliveryFrom(ctx context.Context) *delivery {
	d, _ := ctx.Value(deliveryKey{}).(*delivery)
	return d
}

func (d *delivery) mayHaveRun() bool { return d != nil && d.ran.Load() }

func (d *delivery) httpStatus() (int, string) {
	if d == nil {
		return 0, ""
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status, d.retryAfter
}

// refusedStatus reports whether an HTTP status is sent instead of running
// a request: 404 (MCP: session not found), 429 and 503.
func refusedStatus(s int) bool {
	return s == http.StatusNotFound || s == http.StatusTooManyRequests || s == http.StatusServiceUnavailable
}

// deliveryTransport is the http.RoundTripper under every MCP HTTP request:
// it adds the config's headers and, for a request made for an attempt,
// records what net/http says about its delivery.
//
// Every request also ends when done does (the ToolCaller's Close), even
// one the SDK made with a context it does not cancel (its best-effort
// notifications/cancelled), so Close never waits on a hung server.
type deliveryTransport struct {
	headers map[string]string
	next    http.RoundTripper
	fresh   http.RoundTripper // no keep-alive: for delivery.fresh requests
	done    context.Context
}

func (h deliveryTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(r.Context())
	stop := context.AfterFunc(h.done, cancel)
	end := func() { stop(); cancel() }
	r = r.Clone(ctx)
	for k, v := range h.headers {
		r.Header.Set(k, v)
	}
	resp, err := h.roundTrip(r)
	if err != nil {
		end()
		return nil, err
	}
	resp.Body = &endBody{ReadCloser: resp.Body, end: end}
	return resp, nil
}

// endBody ends its request's context once the body is closed.
type endBody struct {
	io.ReadCloser
	once sync.Once
	end  func()
}

func (b *endBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.end)
	return err
}

func (h deliveryTransport) roundTrip(r *http.Request) (*http.Response, error) {
	d := deliveryFrom(r.Context())
	if d == nil || r.Method != http.MethodPost {
		return h.next.RoundTrip(r)
	}
	next := h.next
	if d.fresh && h.fresh != nil {
		next = h.fresh
	}
	var wrote atomic.Bool
	trace := &httptrace.ClientTrace{WroteRequest: func(i httptrace.WroteRequestInfo) {
		if i.Err == nil {
			wrote.Store(true)
		}
	}}
	r = r.WithContext(httptrace.WithClientTrace(r.Context(), trace))
	resp, err := next.RoundTrip(r)
	switch {
	case err != nil:
		if wrote.Load() {
			d.ran.Store(true) // written, then no answer: it may have run
		}
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		d.ran.Store(true)
	default:
		d.mu.Lock()
		d.status, d.retryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
		d.mu.Unlock()
		if !refusedStatus(resp.StatusCode) {
			d.ran.Store(true)
		}
	}
	return resp, err
}

// trackedTransport wraps a stdio transport so that a tool call written to
// the process counts as delivered.
type trackedTransport struct{ inner sdk.Transport }

func (t trackedTransport) Connect(ctx context.Context) (sdk.Connection, error) {
	c, err := t.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return trackedConn{c}, nil
}

type trackedConn struct{ sdk.Connection }

func (c trackedConn) Write(ctx context.Context, msg jsonrpc.Message) error {
	err := c.Connection.Write(ctx, msg)
	if req, ok := msg.(*jsonrpc.Request); ok && err == nil && req.IsCall() {
		if d := deliveryFrom(ctx); d != nil {
			d.ran.Store(true)
		}
	}
	return err
}

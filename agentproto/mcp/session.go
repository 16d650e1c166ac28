package mcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/tether-dev/tether/agentproto"
)

// session is one MCP session (one stdio process) for one generation.
type session struct {
	gen    *generation
	ready  chan struct{}      // closed when the connect ended; then cs or err is set
	cancel context.CancelFunc // ends the connect
	life   context.Context    // ends with the session: its HTTP requests end with it
	end    context.CancelFunc // ends life
	cs     *sdk.ClientSession
	err    error
	hints  map[string]bool // tools annotated idempotentHint or readOnlyHint
	start  time.Time       // when the connect (process start) began

	// Guarded by ToolCaller.mu.
	refs    int           // calls using or waiting for it
	retired bool          // no new calls; close once refs is 0
	broken  bool          // retired because it failed, not replaced
	idle    chan struct{} // closed when retired and refs is 0

	closeOnce sync.Once
}

// closeGrace bounds closing a session (the SDK's DELETE of an HTTP
// session, its last notifications) before its requests are cut.
const closeGrace = time.Second

func (s *session) close() {
	s.closeOnce.Do(func() {
		if s.cs != nil {
			stop := time.AfterFunc(closeGrace, s.end)
			_ = s.cs.Close()
			stop.Stop()
		}
		s.end()
	})
}

// goFn runs f on a goroutine Close waits for; after Close it does not run
// f (Close has closed everything f would). Called with t.mu held.
func (t *ToolCaller) goFnLocked(f func()) {
	if t.closed {
		return
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		f()
	}()
}

// acquire returns the current session, connecting if there is none, and
// holds a reference on it until release. Waiting for a connect ends with
// ctx; the connect itself goes on for the next caller.
func (t *ToolCaller) acquire(ctx context.Context) (*session, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, ErrClosed
	}
	s := t.cur
	if s == nil {
		var err error
		if s, err = t.startLocked(); err != nil {
			t.mu.Unlock()
			return nil, err
		}
	}
	s.refs++
	t.mu.Unlock()
	select {
	case <-s.ready:
	case <-ctx.Done():
		t.release(s)
		return nil, fmt.Errorf("mcp: waiting for a session with MCP server %s: %w", s.gen.res.Server, context.Cause(ctx))
	}
	if s.err != nil {
		t.release(s)
		return nil, s.err
	}
	return s, nil
}

func (t *ToolCaller) release(s *session) {
	t.mu.Lock()
	if s.refs--; s.refs == 0 && s.retired {
		close(s.idle)
	}
	t.mu.Unlock()
}

// startLocked starts a connect for the current generation; for stdio it
// applies the restart budget first.
func (t *ToolCaller) startLocked() (*session, error) {
	g := t.gen
	var wait time.Duration
	if g.stdio() {
		var quarantined, released bool
		wait, quarantined, released = t.budget.start(t.opts.Now(), t.ran)
		if quarantined {
			return nil, agentproto.MarkPermanent(fmt.Errorf("%w: stdio MCP server %s exited after %d restarts within %v; calls fail until %s",
				ErrQuarantined, g.res.Server, t.budget.count(), t.opts.Restart.Window, t.budget.until.UTC().Format(time.RFC3339)))
		}
		if released {
			t.ss.SetQuarantined(false)
			t.log.Info().Msg("mcp stdio server quarantine over; starting it again")
		}
		if t.ran {
			t.ss.AddRestart()
			t.log.Warn().Int(logKeyRestarts, t.budget.count()).Int64(logKeyDelayMS, wait.Milliseconds()).Msg("mcp stdio server restarting")
		}
		t.ran = true
	}
	life, end := context.WithCancel(t.ctx)
	ctx, cancel := context.WithTimeout(life, wait+g.connect)
	s := &session{gen: g, ready: make(chan struct{}), idle: make(chan struct{}), cancel: cancel, life: life, end: end}
	t.cur = s
	t.live[s] = struct{}{}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		t.connect(ctx, s, wait)
	}()
	return s, nil
}

// connect opens s's MCP session (after wait, a restart backoff) and reads
// its tools' hints; on failure it records the error for the waiters.
func (t *ToolCaller) connect(ctx context.Context, s *session, wait time.Duration) {
	g := s.gen
	if wait > 0 {
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
		}
	}
	s.start = t.opts.Now()
	began := time.Now()
	var cs *sdk.ClientSession
	err := context.Cause(ctx) // Close or Swap during the backoff: start nothing
	if err == nil {
		cs, err = t.dial(ctx, s)
	}
	if err == nil {
		s.hints = t.toolHints(ctx, cs)
	}
	if err != nil {
		t.mu.Lock()
		retired, closed := s.retired, t.closed
		t.mu.Unlock()
		switch {
		case closed:
			err = ErrClosed
		case retired: // given up on by Swap: the waiters retry on the new session
			err = agentproto.MarkTransient(fmt.Errorf("mcp: connect to MCP server %s given up: the config changed: %w", g.res.Server, err))
		}
		s.err = err
		s.cancel()
		s.end()
		close(s.ready)
		t.connectFailed(s, err)
		return
	}
	s.cs = cs
	t.log.Info().Str(logKeyKey, g.res.Key).Uint64(logKeyRevision, g.res.Revision).Str(logKeyTransport, g.res.Config.Transport).
		Str(logKeyProtocol, protocolOf(cs)).Int(logKeyTools, len(s.hints)).Int64(logKeyTookMS, time.Since(began).Milliseconds()).
		Msg("mcp session connected")
	close(s.ready) // after the log line: a call on it never precedes it
	t.mu.Lock()
	t.goFnLocked(func() { t.watch(s) })
	t.mu.Unlock()
}

const logKeyTools = "idempotent_tools"

func protocolOf(cs *sdk.ClientSession) string {
	if r := cs.InitializeResult(); r != nil {
		return r.ProtocolVersion
	}
	return ""
}

// dial makes the transport and connects it, bounded by ctx.
func (t *ToolCaller) dial(ctx context.Context, s *session) (*sdk.ClientSession, error) {
	g := s.gen
	tr, err := t.transport(g, s.life)
	if err != nil {
		return nil, err
	}
	d := &delivery{}
	cs, err := sdk.NewClient(t.opts.Client, nil).Connect(withDelivery(ctx, d), tr, &sdk.ClientSessionOptions{ProtocolVersion: t.opts.ProtocolVersion})
	if err == nil {
		return cs, nil
	}
	err = withHTTPStatus(SessionError(err), d, t.opts.Now())
	if g.stdio() && processGone(err) {
		err = fmt.Errorf("%w: %w", agentproto.ErrMCPProcessExited, err)
	}
	if isUnsupportedVersion(err) || strings.Contains(err.Error(), "unsupported protocol version") {
		// The SDK has already renegotiated once (initialize/discover).
		err = agentproto.MarkPermanent(fmt.Errorf("%w: %w", agentproto.ErrMCPProtocolVersion, err))
	}
	return nil, fmt.Errorf("mcp: connect to MCP server %s: %w", g.res.Server, err)
}

// connectFailed drops a session whose connect failed; a stdio one counts
// as an exited process against the restart budget.
func (t *ToolCaller) connectFailed(s *session, err error) {
	t.log.Warn().Err(err).Str(logKeyFailure, FailureKind(err)).Str(logKeyKey, s.gen.res.Key).
		Uint64(logKeyRevision, s.gen.res.Revision).Msg("mcp connect failed")
	t.mu.Lock()
	if t.cur == s {
		t.cur = nil
	}
	delete(t.live, s)
	quarantined := false
	if s.gen.stdio() && s.gen == t.gen && !s.retired && !t.closed {
		if quarantined = t.budget.exited(s.start, t.opts.Now()); !quarantined {
			t.restartLocked(s.gen)
		}
	}
	t.mu.Unlock()
	if quarantined {
		t.quarantined(s.gen)
	}
}

// restartLocked restarts the current config's stdio process at once
// after it exited (its connect waits the backoff restartBudget.exited
// set), so the next call does not pay the start-up and a crash loop
// reaches its quarantine with no call made. Called with t.mu held, after
// exited said the server is not quarantined. g is the exited process's
// config: after a Swap, or once a call started a process, nothing is done.
func (t *ToolCaller) restartLocked(g *generation) {
	if t.closed || t.cur != nil || g != t.gen {
		return
	}
	if _, err := t.startLocked(); err != nil { // not quarantined: cannot fail
		t.log.Error().Err(err).Msg("mcp stdio server restart refused")
	}
}

// quarantined reports g's quarantine and starts its process again by
// itself once the quarantine is over (as a call then would), so the
// heartbeat does not say "quarantined" for as long as no call comes. A
// Swap that keeps the connection (a new revision, retry policy or
// idempotent_tools) keeps the quarantine and this restart; after Close,
// Release, a changed connection or a call that started it first, nothing
// is done.
func (t *ToolCaller) quarantined(g *generation) {
	t.ss.SetQuarantined(true)
	t.log.Error().Int(logKeyRestarts, t.opts.Restart.MaxRestarts).Int64(logKeyUntilMS, t.opts.Restart.QuarantineFor.Milliseconds()).
		Msg("mcp stdio server quarantined: too many restarts; calls fail fast until the quarantine ends or the config changes")
	t.mu.Lock()
	defer t.mu.Unlock()
	t.goFnLocked(func() {
		for {
			t.mu.Lock()
			cur := t.gen
			if t.closed || t.budget.until.IsZero() || !sameConnection(g.res.Config, cur.res.Config) {
				t.mu.Unlock()
				return // closed, released, or the quarantine ended with its config
			}
			if wait := t.budget.until.Sub(t.opts.Now()); wait > 0 {
				t.mu.Unlock()
				timer := time.NewTimer(wait)
				select {
				case <-t.ctx.Done():
					timer.Stop()
					return
				case <-timer.C:
				}
				continue
			}
			t.restartLocked(cur)
			t.mu.Unlock()
			return
		}
	})
}

// watch waits for s to end. One that ends by itself (the process exited,
// the connection failed) is retired, and for stdio counted against the
// restart budget.
func (t *ToolCaller) watch(s *session) {
	err := s.cs.Wait()
	t.mu.Lock()
	replaced := s.retired && !s.broken
	t.mu.Unlock()
	if !replaced {
		t.broke(s, fmt.Errorf("session ended: %v", err))
	}
}

// broke retires s because it failed, once; for stdio the process is gone
// or hung, which counts against the restart budget. A session already
// retired (replaced by Swap, or broken before) is left alone.
func (t *ToolCaller) broke(s *session, cause error) {
	t.mu.Lock()
	if s.retired {
		t.mu.Unlock()
		return
	}
	quarantined, restart := false, false
	if s.gen.stdio() && s.gen == t.gen && !t.closed {
		quarantined = t.budget.exited(s.start, t.opts.Now())
		restart = !quarantined
	}
	t.retireLocked(s, "session lost", true)
	t.mu.Unlock()
	t.log.Warn().Err(cause).Str(logKeyFailure, FailureKind(cause)).Str(logKeyKey, s.gen.res.Key).
		Uint64(logKeyRevision, s.gen.res.Revision).Msg("mcp session lost")
	if quarantined {
		t.quarantined(s.gen)
	}
	if restart {
		t.mu.Lock()
		t.restartLocked(s.gen)
		t.mu.Unlock()
	}
}

// retire takes s out of use: new calls get a new session, and s is
// closed once its calls finish (bounded by its drain timeout). A connect
// still running is given up on.
func (t *ToolCaller) retire(s *session, reason string, broken bool) {
	t.mu.Lock()
	t.retireLocked(s, reason, broken)
	t.mu.Unlock()
}

func (t *ToolCaller) retireLocked(s *session, reason string, broken bool) {
	if s.retired {
		return
	}
	s.retired, s.broken = true, broken
	if t.cur == s {
		t.cur = nil
	}
	if s.refs == 0 {
		close(s.idle)
	}
	select {
	case <-s.ready:
	default:
		s.end() // a connect still running: give up on it, and on its requests
	}
	t.goFnLocked(func() { t.closeWhenIdle(s, reason) })
}

func (t *ToolCaller) closeWhenIdle(s *session, reason string) {
	<-s.ready
	began := time.Now()
	timer := time.NewTimer(s.gen.drain)
	defer timer.Stop()
	drained := true
	select {
	case <-s.idle:
	case <-timer.C:
		drained = false
	case <-t.ctx.Done():
	}
	t.mu.Lock()
	inflight := s.refs
	delete(t.live, s)
	t.mu.Unlock()
	s.close()
	s.cancel()
	if s.cs == nil {
		return
	}
	ev := t.log.Info()
	if !drained {
		ev = t.log.Warn()
	}
	ev.Str(logKeyReason, reason).Str(logKeyKey, s.gen.res.Key).Uint64(logKeyRevision, s.gen.res.Revision).
		Int(logKeyInFlight, inflight).Int64(logKeyWaitedMS, time.Since(began).Milliseconds()).Msg("mcp session closed")
}

// toolHints reads the server's tools/list (bounded) for the tools
// annotated idempotentHint or readOnlyHint. A failure is logged and
// leaves no hints: only the config's idempotent_tools count then.
func (t *ToolCaller) toolHints(ctx context.Context, cs *sdk.ClientSession) map[string]bool {
	hints := map[string]bool{}
	if r := cs.InitializeResult(); r != nil && r.Capabilities != nil && r.Capabilities.Tools == nil {
		return hints
	}
	params := &sdk.ListToolsParams{}
	listed := 0
	for page := 0; page < maxToolPages && listed < MaxListedTools; page++ {
		res, err := cs.ListTools(ctx, params)
		if err != nil {
			t.log.Warn().Err(err).Msg("mcp tools/list failed; only the config's idempotent_tools are retried after a possible delivery")
			return hints
		}
		for _, tool := range res.Tools {
			if listed++; listed > MaxListedTools {
				break
			}
			if a := tool.Annotations; a != nil && (a.IdempotentHint || a.ReadOnlyHint) {
				hints[tool.Name] = true
			}
		}
		if res.NextCursor == "" {
			break
		}
		params = &sdk.ListToolsParams{Cursor: res.NextCursor}
	}
	return hints
}

// try is one attempt: a call on the current session, re-made at once on
// a new session when the server lost it (404) or rejected the protocol
// version (once each: neither ran the tool).
func (t *ToolCaller) try(ctx context.Context, c *callState) (*sdk.CallToolResult, error) {
	reinit, reneg := false, false
	for {
		s, err := t.acquire(ctx)
		if err != nil {
			return nil, err
		}
		d := &delivery{fresh: !idempotent(c, s)}
		res, err := s.cs.CallTool(withDelivery(ctx, d), &sdk.CallToolParams{Name: c.tool, Arguments: c.args})
		t.release(s)
		if err == nil {
			return res, nil
		}
		err = t.callError(s, d, err)
		if brokenBy(s, err) {
			t.broke(s, err)
		}
		switch {
		case errors.Is(err, sdk.ErrSessionMissing) && !reinit:
			reinit = true
			t.log.Info().Str(logKeyTool, c.tool).Int(logKeyAttempt, c.n).Msg("mcp session not found by the server; re-initializing")
			continue
		case isUnsupportedVersion(err) && !reneg:
			reneg = true
			t.retire(s, "unsupported protocol version", false)
			t.log.Warn().Str(logKeyTool, c.tool).Str(logKeyProtocol, protocolOf(s.cs)).Msg("mcp protocol version rejected; renegotiating once")
			continue
		case isUnsupportedVersion(err):
			return nil, agentproto.MarkPermanent(fmt.Errorf("%w: after renegotiating: %w", agentproto.ErrMCPProtocolVersion, err))
		}
		if d.mayHaveRun() && !rejectedUnrun(err) && !idempotent(c, s) {
			return nil, &OutcomeUnknownError{Server: s.gen.res.Server, Tool: c.tool, Attempt: c.n, Err: err}
		}
		return nil, err
	}
}

// idempotent reports whether c's tool may run twice: the server's hints
// on s, or idempotent_tools in the config s was made for or the one
// current when the call began (a Swap that changed only the list keeps
// the session).
func idempotent(c *callState, s *session) bool {
	return s.hints[c.tool] || s.gen.idem[c.tool] || c.gen.idem[c.tool]
}

// callError labels a failed call's error: the SDK's session errors, the
// HTTP status the transport saw, a stdio process gone.
func (t *ToolCaller) callError(s *session, d *delivery, err error) error {
	err = withHTTPStatus(SessionError(err), d, t.opts.Now())
	if s.gen.stdio() && processGone(err) {
		err = fmt.Errorf("%w: %w", agentproto.ErrMCPProcessExited, err)
	}
	return fmt.Errorf("mcp: tool call on MCP server %s: %w", s.gen.res.Server, err)
}

// processGone reports whether a stdio session's error says its process
// went away: its stdout ended or its stdin broke.
func processGone(err error) bool {
	return errors.Is(err, sdk.ErrConnectionClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.EPIPE)
}

// withHTTPStatus adds the non-2xx status the transport saw as an
// *agentproto.HTTPError (not for a lost session's 404: that is the
// session row's, and re-initializes).
func withHTTPStatus(err error, d *delivery, now time.Time) error {
	st, ra := d.httpStatus()
	if st == 0 || errors.Is(err, sdk.ErrSessionMissing) {
		return err
	}
	if _, ok := errors.AsType[*agentproto.HTTPError](err); ok {
		return err
	}
	return fmt.Errorf("%w: %w", agentproto.NewHTTPError(st, ra, now), err)
}

// brokenBy reports whether err means s cannot serve more calls: the
// connection closed, the session is gone, or (stdio) anything but the
// server's own JSON-RPC answer (the process died or hangs).
func brokenBy(s *session, err error) bool {
	if errors.Is(err, sdk.ErrConnectionClosed) || errors.Is(err, sdk.ErrSessionMissing) {
		return true
	}
	if !s.gen.stdio() || errors.Is(err, context.Canceled) {
		return false
	}
	var je *jsonrpc.Error
	return !errors.As(err, &je) || je.Code == -32004 || je.Code == -32005
}

package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// resolver serves resolve, resolveall and explain from the in-memory index.
type resolver struct {
	subj       agentproto.Subjects
	index      *kvconfig.Index
	log        zerolog.Logger
	retryAfter time.Duration
	metrics    *Metrics
	maxPayload func() int // the connection's max payload, for paging
	fleetSize  func() int // agents tracked but not gone; nil: not reported
	// admitRegistered: only agents in mcp_agents are tracked (explain
	// warns that an unregistered agent's heartbeats are discarded).
	admitRegistered bool
}

// errorReply maps an error to its contract code and answers the request.
func (r *resolver) errorReply(req micro.Request, err error) int {
	code, msg := classifyResolveError(err)
	data, _ := json.Marshal(agentproto.ErrorBody{Error: *r.detail(code, msg)})
	if rerr := req.Error(strconv.Itoa(code), msg, data); rerr != nil {
		r.log.Warn().Err(rerr).Str("subject", kvconfig.Truncate(req.Subject(), 200)).Msg("cannot send error reply")
	}
	return code
}

// detail is the error body of the contract: retryable only for 503, which
// also carries the retry_after hint.
func (r *resolver) detail(code int, msg string) *agentproto.ErrorDetail {
	d := &agentproto.ErrorDetail{Code: agentproto.ErrorName(code), Status: code, Message: msg, Retryable: code == agentproto.CodeUnavailable}
	if d.Retryable {
		d.RetryAfterMS = r.retryAfter.Milliseconds()
	}
	return d
}

func classifyResolveError(err error) (int, string) {
	var ie *kvconfig.IDError
	var ce *kvconfig.ConfigError
	var be *badRequest
	switch {
	case errors.As(err, &be):
		return be.code, be.msg
	case errors.As(err, &ie):
		return agentproto.CodeBadRequest, err.Error()
	case errors.Is(err, kvconfig.ErrNotReady):
		return agentproto.CodeUnavailable, err.Error() + "; retry shortly"
	case errors.Is(err, kvconfig.ErrNotFound):
		return agentproto.CodeNotFound, err.Error()
	case errors.As(err, &ce):
		return agentproto.CodeInvalidConfig, err.Error() + "; fix the value with nats kv put, or delete it to fall back to a less specific scope"
	}
	return agentproto.CodeUnavailable, err.Error()
}

// badRequest is an edge error with its code (400 or 403).
type badRequest struct {
	code int
	msg  string
}

func (b *badRequest) Error() string { return b.msg }

// parseTokens checks the subject has n tokens after the verb, validates
// them as identifiers and checks an optional body's "agent" field against
// the subject.
func (r *resolver) parseTokens(verb string, req micro.Request, kinds ...string) ([]string, error) {
	toks, ok := r.subj.Tokens(verb, req.Subject())
	if !ok || len(toks) != len(kinds) {
		want := r.subj.Wildcard(verb)
		want = want[:len(want)-1]
		for i, k := range kinds {
			if i > 0 {
				want += "."
			}
			want += "<" + k + ">"
		}
		return nil, &badRequest{agentproto.CodeBadRequest, "supervisor: subject " + strconv.Quote(req.Subject()) + " is not " + want}
	}
	for i, k := range kinds {
		if err := kvconfig.ValidateID(k, toks[i]); err != nil {
			return nil, err
		}
	}
	if data := req.Data(); len(data) > 0 && data[0] == '{' {
		var body struct {
			Agent string `json:"agent"`
		}
		if json.Unmarshal(data, &body) == nil && body.Agent != "" && body.Agent != toks[0] {
			r.metrics.spoofed("resolve")
			return nil, &badRequest{agentproto.CodeForbidden, "supervisor: body agent " + strconv.Quote(kvconfig.Truncate(body.Agent, 80)) + " disagrees with subject agent " + strconv.Quote(toks[0])}
		}
	}
	return toks, nil
}

func (r *resolver) handleResolve(req micro.Request) {
	start := time.Now()
	toks, err := r.parseTokens("resolve", req, kvconfig.KindAgent, kvconfig.KindServer)
	var res kvconfig.Resolution
	if err == nil {
		res, err = r.index.Resolve(toks[0], toks[1])
	}
	if err != nil {
		code := r.errorReply(req, err)
		r.metrics.resolved(res.Scope, agentproto.ErrorName(code), time.Since(start))
		ev := r.log.Warn()
		if code == agentproto.CodeInvalidConfig {
			ev = r.log.Error()
		}
		agent, server := res.Agent, res.Server
		if agent == "" { // refused before resolving: name what the subject says
			if raw, ok := r.subj.Tokens("resolve", req.Subject()); ok && len(raw) == 2 {
				agent, server = kvconfig.Truncate(raw[0], 64), kvconfig.Truncate(raw[1], 64)
			}
		}
		ev.Str("subject", kvconfig.Truncate(req.Subject(), 200)).Str("agent", agent).Str("server", server).
			Str("scope", res.Scope).Str("key", res.Key).Uint64("revision", res.Revision).
			Int("code", code).Str("error", errText(err)).Dur("latency_ms", time.Since(start)).Msg("resolve failed")
		return
	}
	bp := replyBufs.Get().(*[]byte)
	*bp = appendResolveReply((*bp)[:0], res)
	if err := req.Respond(*bp); err != nil { // Respond copies the bytes out
		r.log.Warn().Err(err).Str("agent", res.Agent).Msg("cannot send resolve reply")
	}
	if cap(*bp) <= maxPooledReply {
		replyBufs.Put(bp)
	}
	lat := time.Since(start)
	r.metrics.resolved(res.Scope, "ok", lat)
	r.log.Info().Str("agent", res.Agent).Str("server", res.Server).Str("role", res.Role).
		Str("scope", res.Scope).Str("key", res.Key).Uint64("revision", res.Revision).
		Dur("latency_ms", lat).Msg("resolved")
}

// maxPooledReply keeps one huge config from pinning memory in the pool.
const maxPooledReply = 16 << 10

var replyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// appendResolveReply writes a ResolveReply without reflection. Every string
// is an identifier or built from identifiers ([A-Za-z0-9_-:.]), so it needs
// no escaping; Raw is the compacted JSON the index validated.
func appendResolveReply(b []byte, res kvconfig.Resolution) []byte {
	b = append(b, `{"agent":"`...)
	b = append(b, res.Agent...)
	b = append(b, `","server":"`...)
	b = append(b, res.Server...)
	if res.Role != "" {
		b = append(b, `","role":"`...)
		b = append(b, res.Role...)
	}
	b = append(b, `","scope":"`...)
	b = append(b, res.Scope...)
	b = append(b, `","key":"`...)
	b = append(b, res.Key...)
	b = append(b, `","revision":`...)
	b = strconv.AppendUint(b, res.Revision, 10)
	b = append(b, `,"as_of":{"configs":`...)
	b = strconv.AppendUint(b, res.AsOf.Configs, 10)
	b = append(b, `,"agents":`...)
	b = strconv.AppendUint(b, res.AsOf.Agents, 10)
	if res.AsOf.Epoch != "" {
		b = append(b, `,"epoch":`...)
		b = strconv.AppendQuote(b, res.AsOf.Epoch)
	}
	b = append(b, `},"config":`...)
	b = append(b, res.Raw...)
	return append(b, '}')
}

func (r *resolver) handleResolveAll(req micro.Request) {
	start := time.Now()
	toks, err := r.parseTokens("resolveall", req, kvconfig.KindAgent)
	var role string
	var items []kvconfig.ResolveItem
	if err == nil {
		role, items, err = r.index.ResolveAll(toks[0])
	}
	asOf := r.index.AsOf()
	if len(items) > 0 {
		asOf = items[0].AsOf // taken under the same lock as the answers
	}
	if err != nil {
		code := r.errorReply(req, err)
		r.log.Warn().Str("subject", kvconfig.Truncate(req.Subject(), 200)).Int("code", code).Str("error", errText(err)).Msg("resolveall failed")
		return
	}
	page, next, err := r.page(req.Data(), items)
	if err != nil {
		code := r.errorReply(req, err)
		r.log.Warn().Str("subject", kvconfig.Truncate(req.Subject(), 200)).Int("code", code).Str("error", errText(err)).Msg("resolveall failed")
		return
	}
	reply := agentproto.ResolveAllReply{Agent: toks[0], Role: role, AsOf: asOf, Next: next,
		Servers: make(map[string]agentproto.ResolveResult, len(page))}
	if r.fleetSize != nil {
		reply.FleetSize = agentproto.FleetSizeHint(r.fleetSize())
	}
	failed := 0
	for _, it := range page {
		if it.Err != nil {
			code, msg := classifyResolveError(it.Err)
			failed++
			reply.Servers[it.Server] = agentproto.ResolveResult{Scope: it.Scope, Key: it.Key, Revision: it.Revision,
				Error: r.detail(code, msg)}
			r.log.Error().Str("agent", toks[0]).Str("server", it.Server).Str("scope", it.Scope).Str("key", it.Key).
				Uint64("revision", it.Revision).Str("error", errText(it.Err)).Msg("resolveall: server failed")
			continue
		}
		reply.Servers[it.Server] = agentproto.ResolveResult{Scope: it.Scope, Key: it.Key, Revision: it.Revision, Config: it.Raw}
		r.log.Debug().Str("agent", toks[0]).Str("server", it.Server).Str("role", role).Str("scope", it.Scope).
			Str("key", it.Key).Uint64("revision", it.Revision).Msg("resolved") // the summary line below is the info one
	}
	if err := req.RespondJSON(reply); err != nil {
		r.log.Warn().Err(err).Str("agent", toks[0]).Msg("cannot send resolveall reply")
	}
	r.log.Info().Str("agent", toks[0]).Int("servers", len(page)).Int("visible", len(items)).Str("next", next).Int("failed", failed).
		Dur("latency_ms", time.Since(start)).Msg("resolveall")
}

// Paging of resolveall (the wire contract): items come sorted by server;
// a page holds those after the request's "after", at most "limit" of them,
// and never more bytes than fit under the server's max payload.
const (
	// MaxResolveAllLimit bounds a resolveall request's limit.
	MaxResolveAllLimit = 10000
	// replyHeadroom is kept free under the max payload for the reply's
	// envelope and headers.
	replyHeadroom = 4 << 10
)

// page picks the page of items a resolveall body asks for and the next
// cursor ("" on the last page).
func (r *resolver) page(body []byte, items []kvconfig.ResolveItem) ([]kvconfig.ResolveItem, string, error) {
	var q agentproto.ResolveAllRequest
	if len(body) > 0 && body[0] == '{' {
		if err := json.Unmarshal(body, &q); err != nil {
			return nil, "", &badRequest{agentproto.CodeBadRequest, "supervisor: resolveall body: " + err.Error() + ` (want {"after":"<server>","limit":N})`}
		}
	}
	if q.After != "" && !kvconfig.ValidID(q.After) {
		return nil, "", &badRequest{agentproto.CodeBadRequest, "supervisor: resolveall after " + strconv.Quote(kvconfig.Truncate(q.After, 80)) + " is not a server name"}
	}
	if q.Limit < 0 || q.Limit > MaxResolveAllLimit {
		return nil, "", &badRequest{agentproto.CodeBadRequest, fmt.Sprintf("supervisor: resolveall limit %d outside 0..%d (0: as many as fit)", q.Limit, MaxResolveAllLimit)}
	}
	first := sort.Search(len(items), func(i int) bool { return items[i].Server > q.After })
	budget := r.maxPayload() - replyHeadroom
	size := 0
	for i := first; i < len(items); i++ {
		n := itemSize(&items[i])
		if i > first && (size+n > budget || q.Limit > 0 && i-first == q.Limit) {
			return items[first:i], items[i-1].Server, nil
		}
		if n > budget { // alone it cannot be sent: say so instead
			items[i].Err = &kvconfig.ConfigError{Key: items[i].Key, Revision: items[i].Revision,
				Err: fmt.Errorf("value of %d bytes does not fit in a reply under the server's max payload", len(items[i].Raw))}
			items[i].Raw, n = nil, 256
		}
		size += n
	}
	return items[first:], "", nil
}

// itemSize is about what one server adds to a resolveall reply.
func itemSize(it *kvconfig.ResolveItem) int {
	return len(it.Server) + len(it.Scope) + len(it.Key) + len(it.Raw) + 96
}

func (r *resolver) handleExplain(req micro.Request) {
	toks, err := r.parseTokens("explain", req, kvconfig.KindAgent, kvconfig.KindServer)
	var x kvconfig.Explanation
	if err == nil {
		x, err = r.index.Explain(toks[0], toks[1])
	}
	if err != nil {
		r.errorReply(req, err)
		return
	}
	if r.admitRegistered && !r.index.Registered(x.Agent) {
		x.Warnings = append(x.Warnings, fmt.Sprintf("the supervisor does not track agent %s: with admission %q (the default) its heartbeats are discarded until it has an entry in %s",
			x.Agent, AdmitRegistered, kvconfig.BucketAgents))
	}
	if err := req.RespondJSON(x); err != nil {
		r.log.Warn().Err(err).Msg("cannot send explain reply")
	}
	r.log.Info().Str("agent", x.Agent).Str("server", x.Server).Str("winner", x.WinnerKey).Str("outcome", x.Outcome).
		Int("warnings", len(x.Warnings)).Msg("explained")
}

// errText is an error for a log line, bounded: request errors quote what
// the requester sent.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return kvconfig.Truncate(err.Error(), 300)
}

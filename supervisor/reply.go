package supervisor

import (
	"strings"

	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// The reply-subject rule. The server does not check reply subjects, and
// the supervisor's user may publish where agents may not, so a request
// could aim the supervisor's answer at any subject: a KV bucket's
// ($KV.mcp_leader.supervisor), another agent's heartbeat inbox, a command
// subject. A request that names agent X (resolve, resolveall) is answered
// only under _INBOX_X. or _INBOX. (an operator's CLI); any other request
// only under _INBOX. or _INBOX_<id>. for a valid id. Nothing starting with
// $ or the Tether prefix, and no wildcard, is ever a reply subject. A
// refused request gets no reply; it is counted and logged, sampled.

// replyAllowed reports whether reply may receive the answer to a request
// that names agent ("" when it names none, or names an invalid id).
func replyAllowed(reply, agent, prefix string) bool {
	switch {
	case reply == "", strings.HasPrefix(reply, "$"), strings.HasPrefix(reply, prefix+"."),
		strings.ContainsAny(reply, "*> \t\r\n"), strings.Contains(reply, ".."), strings.HasSuffix(reply, "."):
		return false
	case strings.HasPrefix(reply, "_INBOX."):
		return true
	}
	rest, ok := strings.CutPrefix(reply, "_INBOX_")
	if !ok {
		return false
	}
	id, _, ok := strings.Cut(rest, ".")
	if !ok || !kvconfig.ValidID(id) {
		return false
	}
	return agent == "" || id == agent
}

// replyGuard wraps the service's handlers with the reply-subject rule.
type replyGuard struct {
	subj    agentproto.Subjects
	prefix  string // the Tether subject prefix, e.g. "mcp"
	metrics *Metrics
	log     zerolog.Logger // sampled by the caller
}

func newReplyGuard(subj agentproto.Subjects, m *Metrics, log zerolog.Logger) *replyGuard {
	prefix := subj.Prefix
	if prefix == "" {
		prefix = agentproto.DefaultPrefix
	}
	return &replyGuard{subj: subj, prefix: prefix, metrics: m, log: log}
}

// guard answers req with h only if its reply subject is allowed. verb is
// the endpoint's subject verb; named says whether its first token names
// the requesting agent.
func (g *replyGuard) guard(endpoint, verb string, named bool, h micro.HandlerFunc) micro.HandlerFunc {
	return func(req micro.Request) {
		if g.allowed(req, verb, named) {
			h(req)
			return
		}
		g.metrics.replyRefused(endpoint)
		g.log.Warn().Str("endpoint", endpoint).Str("subject", kvconfig.Truncate(req.Subject(), 200)).
			Str("reply", kvconfig.Truncate(req.Reply(), 200)).
			Msg("request refused: its reply subject is not the requester's inbox (reply-subject rule); no answer sent")
	}
}

// allowed applies the rule to one request.
func (g *replyGuard) allowed(req micro.Request, verb string, named bool) bool {
	if !named {
		return replyAllowed(req.Reply(), "", g.prefix)
	}
	if agent, ok := g.agentOf(verb, req.Subject()); ok {
		return replyAllowed(req.Reply(), agent, g.prefix)
	}
	// A malformed subject gets its 400, but only on the shared inbox.
	return strings.HasPrefix(req.Reply(), "_INBOX.") && replyAllowed(req.Reply(), "", g.prefix)
}

// agentOf is the agent a request's subject names; false if the token is
// missing or not a valid id.
func (g *replyGuard) agentOf(verb, subject string) (string, bool) {
	toks, ok := g.subj.Tokens(verb, subject)
	if !ok || len(toks) == 0 || !kvconfig.ValidID(toks[0]) {
		return "", false
	}
	return toks[0], true
}

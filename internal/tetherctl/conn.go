package tetherctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// opCtx bounds one NATS operation by --timeout.
func (a *app) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.g.timeout)
}

// connect opens the NATS connection once.
func (a *app) connect() error {
	if a.nc != nil {
		return nil
	}
	opts := []nats.Option{nats.Name("tetherctl"), nats.Timeout(a.g.timeout), nats.NoReconnect()}
	switch {
	case a.g.creds != "":
		opts = append(opts, nats.UserCredentials(a.g.creds))
		if p := privateInbox(a.g.creds); p != "" {
			opts = append(opts, nats.CustomInboxPrefix(p))
		}
	case a.g.user != "":
		opts = append(opts, nats.UserInfo(a.g.user, a.g.password))
	case a.g.token != "":
		opts = append(opts, nats.Token(a.g.token))
	}
	nc, err := nats.Connect(a.g.url, opts...)
	if err != nil {
		where := kvconfig.MaskURLs(a.g.url)
		if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) {
			return fail(nil, err, "NATS at %s refused the credentials (%v); check --creds, --user/--password or --token", where, err)
		}
		return fail(ErrUnavailable, err, "cannot connect to NATS at %s: %v; check --nats-url (env TETHER_NATS_URL) and that nats-server or the supervisor is running", where, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return fail(nil, err, "jetstream: %v", err)
	}
	a.nc, a.js = nc, js
	return nil
}

// privateInbox is the inbox prefix a .creds file's user must use: P when
// the only inbox it may subscribe is P.> (a viewer's _INBOX.viewer, an
// agent's _INBOX_<id>); "" for the shared inbox or a file it cannot read
// (nats.go reports that).
func privateInbox(credsFile string) string {
	data, err := os.ReadFile(credsFile)
	if err != nil {
		return ""
	}
	token, err := jwt.ParseDecoratedJWT(data)
	if err != nil {
		return ""
	}
	uc, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return ""
	}
	prefix := ""
	for _, s := range uc.Sub.Allow {
		p, ok := strings.CutSuffix(s, ".>")
		if !ok || !strings.HasPrefix(p, "_INBOX") {
			continue
		}
		if p == "_INBOX" || prefix != "" {
			return "" // the shared inbox, or more than one
		}
		prefix = p
	}
	return prefix
}

// configs opens the mcp_configs bucket.
func (a *app) configs(ctx context.Context) (jetstream.KeyValue, error) {
	if err := a.connect(); err != nil {
		return nil, err
	}
	octx, cancel := a.opCtx(ctx)
	defer cancel()
	kv, err := a.js.KeyValue(octx, kvconfig.BucketConfigs)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fail(ErrUnavailable, err, "KV bucket %s does not exist on %s: start the supervisor once (it creates the buckets), or check --nats-url",
			kvconfig.BucketConfigs, kvconfig.MaskURLs(a.g.url))
	}
	if err != nil {
		return nil, a.natsFailure("open KV bucket "+kvconfig.BucketConfigs, err)
	}
	return kv, nil
}

// request sends body to the supervisor on subject and returns the reply,
// mapping contract error replies to exit classes.
func (a *app) request(ctx context.Context, subject string, body []byte) ([]byte, error) {
	if err := a.connect(); err != nil {
		return nil, err
	}
	octx, cancel := a.opCtx(ctx)
	defer cancel()
	msg, err := a.nc.RequestWithContext(octx, subject, body)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, fail(ErrUnavailable, err, "no supervisor answers %s: start it (go run ./cmd/supervisor), or check --nats-url and --prefix (now %q)", subject, a.g.prefix)
	}
	if err != nil {
		return nil, a.natsFailure("request "+subject, err)
	}
	code := msg.Header.Get(agentproto.HeaderServiceErrorCode)
	if code == "" {
		return msg.Data, nil
	}
	n, _ := strconv.Atoi(code)
	text := msg.Header.Get(agentproto.HeaderServiceError)
	var eb agentproto.ErrorBody
	if json.Unmarshal(msg.Data, &eb) == nil && eb.Error.Message != "" {
		text = eb.Error.Message
	}
	for _, pkg := range []string{"kvconfig: ", "supervisor: ", "fleet: "} {
		text = strings.TrimPrefix(text, pkg)
	}
	var kind error
	switch n {
	case agentproto.CodeBadRequest:
		kind = ErrUsage
	case agentproto.CodeNotFound:
		kind = ErrNotFound
	case agentproto.CodeInvalidConfig:
		kind = ErrInvalidConfig
	case agentproto.CodeUnavailable:
		kind, text = ErrUnavailable, text+" (the supervisor is not ready; retry shortly)"
	}
	return nil, fail(kind, &agentproto.ServiceError{Subject: subject, Code: n, Message: text},
		"supervisor answered %s %s: %s", code, agentproto.ErrorName(n), text)
}

func (a *app) subjects() agentproto.Subjects { return agentproto.Subjects{Prefix: a.g.prefix} }

func validPrefix(p string) error {
	if !kvconfig.ValidID(p) {
		return usageErr(nil, "--prefix %q: use 1-%d characters of A-Z a-z 0-9 _ -", p, kvconfig.MaxIDLen)
	}
	return nil
}

// keyArg validates SCOPE and SERVER as typed and builds the KV key.
func keyArg(scope, server string) (kvconfig.Key, error) {
	kind, owner, err := kvconfig.ParseScope(scope)
	if err != nil {
		return kvconfig.Key{}, usageErr(nil, "SCOPE %v", trimPkg(err))
	}
	k, err := kvconfig.KeyFor(kind, owner, server)
	if err != nil {
		return kvconfig.Key{}, usageErr(nil, "SERVER %v", trimPkg(err))
	}
	return k, nil
}

// idArg validates one identifier argument.
func idArg(kind, s string) error {
	if err := kvconfig.ValidateID(kind, s); err != nil {
		return usageErr(nil, "%v", trimPkg(err))
	}
	return nil
}

// trimPkg drops a leading "kvconfig: " so messages read once as tetherctl's.
func trimPkg(err error) string {
	return strings.TrimPrefix(err.Error(), "kvconfig: ")
}

// readInput reads a FILE argument; "-" is standard input.
func (a *app) readInput(name string) ([]byte, error) {
	var r io.Reader = a.cli.Stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, fail(nil, err, "cannot read %s: %v", name, err)
		}
		defer f.Close()
		r = f
	}
	// One byte over the limit is enough for DecodeConfig to report the size.
	data, err := io.ReadAll(io.LimitReader(r, 16*kvconfig.MaxConfigBytes+1))
	if err != nil {
		return nil, fail(nil, err, "cannot read %s: %v", displayName(name), err)
	}
	return data, nil
}

func displayName(name string) string {
	if name == "-" {
		return "standard input"
	}
	return name
}

// configErr wraps a kvconfig validation error of the named source. One
// problem is one line, as before; several are a count, then one indented
// line each that starts with label (the KV key being written, or the
// source itself) and names the field, what is wrong and what to do.
func configErr(source, label string, err error, hint string) error {
	probs, more := configProblems(err)
	if len(probs)+more <= 1 {
		return fail(ErrInvalidConfig, err, "invalid config in %s: %s%s", source, describeConfigErr(err), hint)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "invalid config in %s: %d problems%s:", source, len(probs)+more, hint)
	for _, line := range problemLines(label, probs, more) {
		b.WriteString("\n  " + line)
	}
	return fail(ErrInvalidConfig, err, "%s", b.String())
}

// configProblems returns the listed problems of a kvconfig error and how
// many more it found without listing them.
func configProblems(err error) ([]*kvconfig.ConfigError, int) {
	var ces *kvconfig.ConfigErrors
	if errors.As(err, &ces) {
		return ces.Problems, ces.More
	}
	return kvconfig.Problems(err), 0
}

// problemLines is one line per problem, each starting with label.
func problemLines(label string, probs []*kvconfig.ConfigError, more int) []string {
	lines := make([]string, 0, len(probs)+1)
	for _, p := range probs {
		lines = append(lines, label+": "+p.Detail())
	}
	if more > 0 {
		lines = append(lines, fmt.Sprintf("%s: %d more problem(s) not listed; fix these and validate again", label, more))
	}
	return lines
}

// describeConfigErr says which field is wrong and why, without repeating
// the package and "invalid config", on one line: several problems are
// counted and joined with "; ".
func describeConfigErr(err error) string {
	probs, more := configProblems(err)
	switch {
	case len(probs) == 0:
		return trimPkg(err)
	case len(probs) == 1 && more == 0:
		return probs[0].Detail()
	}
	details := make([]string, len(probs))
	for i, p := range probs {
		details[i] = p.Detail()
	}
	s := fmt.Sprintf("%d problems: %s", len(probs)+more, strings.Join(details, "; "))
	if more > 0 {
		s += fmt.Sprintf("; and %d more", more)
	}
	return s
}

// quoteList formats names for messages.
func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}

package tetherctl

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

func agentServerArgs(args []string) error {
	if err := idArg(kvconfig.KindAgent, args[0]); err != nil {
		return err
	}
	return idArg(kvconfig.KindServer, args[1])
}

func (a *app) cmdResolve(ctx context.Context, args []string) error {
	if err := agentServerArgs(args); err != nil {
		return err
	}
	data, err := a.request(ctx, a.subjects().Resolve(args[0], args[1]), nil)
	if err != nil {
		return err
	}
	var r agentproto.ResolveReply
	if err := json.Unmarshal(data, &r); err != nil {
		return fail(nil, err, "cannot decode the supervisor's resolve reply: %v", err)
	}
	r.Config = a.mask(r.Config)
	if a.g.json {
		return a.printJSON(r)
	}
	t := newTable(a.out, "agent", r.Agent)
	t.row("role", r.Role)
	t.row("server", r.Server)
	t.row("scope", r.Scope)
	t.row("key", r.Key)
	t.row("revision", strconv.FormatUint(r.Revision, 10))
	t.flush()
	fmt.Fprintf(a.out, "config:\n%s\n", indent(r.Config))
	return nil
}

func (a *app) cmdExplain(ctx context.Context, args []string) error {
	if err := agentServerArgs(args); err != nil {
		return err
	}
	data, err := a.request(ctx, a.subjects().Explain(args[0], args[1]), nil)
	if err != nil {
		return err
	}
	var x kvconfig.Explanation
	if err := json.Unmarshal(data, &x); err != nil {
		return fail(nil, err, "cannot decode the supervisor's explain reply: %v", err)
	}
	if a.g.json {
		if err := a.printJSON(json.RawMessage(data)); err != nil {
			return err
		}
	} else {
		a.printExplain(x)
	}
	switch x.Outcome {
	case "not_found":
		return fail(ErrNotFound, nil, "no scope has server %q for agent %q; write one with 'tetherctl put global %s FILE'", x.Server, x.Agent, x.Server)
	case "invalid_config":
		return fail(ErrInvalidConfig, nil, "agent %q cannot resolve %q: %s", x.Agent, x.Server, strings.TrimPrefix(x.Error, "kvconfig: "))
	}
	return nil
}

func (a *app) printExplain(x kvconfig.Explanation) {
	role := "(none in " + kvconfig.BucketAgents + ")"
	switch {
	case x.RoleError != "":
		role = "(registry record invalid: " + x.RoleError + ")"
	case x.Role != "":
		role = fmt.Sprintf("%s (%s revision %d)", x.Role, kvconfig.BucketAgents, x.RoleRevision)
	}
	fmt.Fprintf(a.out, "agent %s  server %s  role %s\n", x.Agent, x.Server, role)
	t := newTable(a.out, "SCOPE", "KEY", "PRESENT", "VALID", "REVISION", "RESULT", "ERROR")
	for _, s := range x.Scopes {
		if s.Skipped != "" {
			t.row(s.Scope, s.Key, "", "", "", "skipped", s.Skipped)
			continue
		}
		present, valid, rev, result := "no", "", "", ""
		if s.Present {
			present, valid, rev = "yes", yesNo(s.Valid), strconv.FormatUint(s.Revision, 10)
		}
		switch {
		case s.Winner:
			result = "WINNER"
		case s.Shadowed:
			result = "shadowed"
		}
		t.row(s.Scope, s.Key, present, valid, rev, result, strings.TrimPrefix(s.Error, "kvconfig: "))
	}
	t.flush()
	switch x.Outcome {
	case "ok":
		fmt.Fprintf(a.out, "outcome: ok: agent %s gets %s (%s)\n", x.Agent, x.WinnerKey, x.Winner)
	case "not_found":
		fmt.Fprintln(a.out, "outcome: not found: no scope has this server")
	default:
		fmt.Fprintf(a.out, "outcome: %s: %s\n", x.Outcome, strings.TrimPrefix(x.Error, "kvconfig: "))
	}
	if len(x.Shadowed) > 0 {
		fmt.Fprintf(a.out, "shadowed (present, not used): %s\n", strings.Join(x.Shadowed, ", "))
	}
	for _, w := range x.Warnings {
		fmt.Fprintf(a.out, "WARNING: %s\n", w)
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

package tetherctl

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tether-dev/tether/kvconfig"
	"github.com/tether-dev/tether/supervisor/auth"
)

// Agent credentials are signed here, with the account signing key in
// <data-dir>/auth/, rather than by the supervisor over an endpoint: it
// works while the supervisor is down, no signing request ever crosses NATS
// (an endpoint that mints credentials is one more thing an attacker on the
// bus could aim at), and access to the key is exactly access to the data
// directory, which an operator of the supervisor's host already has.
// Revocation re-signs the account JWT with the operator key and pushes it
// to the running server through the system account.

// DefaultDataDir is where tetherctl looks for the supervisor's auth material.
const DefaultDataDir = "./data"

func agentFlags(fs *flag.FlagSet, f *cmdFlags) {
	fs.StringVar(&f.role, "role", "", "")
	fs.StringVar(&f.out, "out", "", "")
	fs.Var(&f.consumers, "consumer", "")
}

// consumerFlags is the repeatable --consumer STREAM:DURABLE, each checked
// as it is given.
type consumerFlags []auth.ConsumerGrant

func (c *consumerFlags) String() string {
	if c == nil {
		return ""
	}
	s := make([]string, len(*c))
	for i, g := range *c {
		s[i] = g.Stream + ":" + g.Durable
	}
	return strings.Join(s, ",")
}

func (c *consumerFlags) Set(v string) error {
	g, err := auth.ParseConsumerGrant(v)
	if err != nil {
		return err
	}
	if len(*c) >= auth.MaxConsumerGrants {
		return fmt.Errorf("at most %d --consumer grants per agent", auth.MaxConsumerGrants)
	}
	if slices.Contains(*c, g) {
		return fmt.Errorf("--consumer %s given twice", v)
	}
	*c = append(*c, g)
	return nil
}

// cmdAgent runs agent add|revoke|list.
func (a *app) cmdAgent(ctx context.Context, args []string) error {
	switch sub := args[0]; {
	case sub == "add" && len(args) == 2:
		return a.agentAdd(ctx, args[1])
	case sub == "revoke" && len(args) == 2:
		return a.agentRevoke(ctx, args[1])
	case sub == "list" && len(args) == 1:
		return a.agentList(ctx)
	case sub == "forget" && len(args) == 2:
		return a.agentForget(ctx, args[1])
	case sub == "release" && len(args) == 2:
		return a.agentRelease(ctx, args[1])
	}
	return usageErr(lookup("agent"), "want 'agent add ID --role ROLE [--consumer STREAM:DURABLE]... [--out FILE]', 'agent revoke ID', 'agent forget ID', 'agent release ID' or 'agent list'")
}

func (a *app) material() (*auth.Material, error) {
	m, err := auth.Load(a.g.dataDir)
	if errors.Is(err, auth.ErrNoMaterial) {
		return nil, fail(ErrNotFound, err, "no auth material in %s: start the supervisor once (go run ./cmd/supervisor --data-dir %s) or pass --data-dir (env TETHER_DATA_DIR)",
			filepath.Join(a.g.dataDir, auth.DirName), a.g.dataDir)
	}
	if err != nil {
		return nil, fail(nil, err, "%v", err)
	}
	return m, nil
}

func (a *app) agentAdd(ctx context.Context, id string) error {
	if err := idArg(kvconfig.KindAgent, id); err != nil {
		return err
	}
	role := a.f.role
	if role == "" {
		return usageErr(lookup("agent"), "agent add needs --role ROLE (the role its configs resolve under)")
	}
	if err := idArg(kvconfig.KindRole, role); err != nil {
		return err
	}
	m, err := a.material()
	if err != nil {
		return err
	}
	creds, pub, err := m.AgentCreds(id, a.g.prefix, a.f.consumers...)
	if err != nil {
		return fail(nil, err, "%v", err)
	}
	out := a.f.out
	if out == "" {
		out = id + ".creds"
	}
	if err := os.WriteFile(out, creds, 0o600); err != nil {
		return fail(nil, err, "write %s: %v", out, err)
	}
	if err := os.Chmod(out, 0o600); err != nil {
		return fail(nil, err, "%s: %v", out, err)
	}
	if err := m.RecordAgent(id, pub); err != nil {
		return fail(nil, err, "%v", err)
	}
	rev, err := a.registerRole(ctx, m, id, role)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.out, "agent %s (role %s): credentials written to %s (mode 0600); registered in %s at revision %d\n",
		id, role, out, kvconfig.BucketAgents, rev)
	for _, g := range a.f.consumers {
		fmt.Fprintf(a.out, "  may consume durable %s of stream %s (pull, ack; it cannot create or delete streams or consumers)\n", g.Durable, g.Stream)
	}
	return nil
}

// registerRole writes the agent's role and granted consumers to mcp_agents, connecting with the
// operator credentials of the data directory unless others were given.
func (a *app) registerRole(ctx context.Context, m *auth.Material, id, role string) (uint64, error) {
	a.defaultCreds(m, auth.OperatorFile)
	if err := a.connect(); err != nil {
		return 0, err
	}
	octx, cancel := a.opCtx(ctx)
	defer cancel()
	kv, err := a.js.KeyValue(octx, kvconfig.BucketAgents)
	if err != nil {
		return 0, fail(ErrUnavailable, err, "open %s: %v", kvconfig.BucketAgents, err)
	}
	rec := kvconfig.AgentRecord{Role: role}
	for _, g := range a.f.consumers {
		rec.Consumers = append(rec.Consumers, g.Stream+":"+g.Durable)
	}
	val, _ := json.Marshal(rec)
	if _, err := kvconfig.DecodeAgentRecord(val); err != nil { // the supervisor decodes it so
		return 0, fail(nil, err, "%v", err)
	}
	rev, err := kv.Put(octx, id, val)
	if err != nil {
		return 0, fail(ErrUnavailable, err, "register %s in %s: %v", id, kvconfig.BucketAgents, err)
	}
	return rev, nil
}

// defaultCreds uses the data directory's credentials when none were given.
func (a *app) defaultCreds(m *auth.Material, file string) {
	if a.g.creds == "" && a.g.user == "" && a.g.token == "" {
		if _, err := os.Stat(m.Path(file)); err == nil {
			a.g.creds = m.Path(file)
		}
	}
}

func (a *app) agentRevoke(ctx context.Context, id string) error {
	if err := idArg(kvconfig.KindAgent, id); err != nil {
		return err
	}
	m, err := a.material()
	if err != nil {
		return err
	}
	keys, err := m.AgentKeys(id)
	if err != nil {
		return fail(ErrNotFound, err, "agent %s: no credentials were issued from %s ('tetherctl agent list')", id, m.Dir)
	}
	var token string
	for _, k := range keys {
		if token, err = m.Revoke(k); err != nil {
			return fail(nil, err, "%v", err)
		}
	}
	if err := a.pushAccount(ctx, m, token); err != nil {
		return err
	}
	fmt.Fprintf(a.out, "agent %s: %d credential(s) revoked; its connections are closed and cannot come back\n", id, len(keys))
	return nil
}

// pushAccount sends the re-signed account JWT to the running server through
// the system account, which applies it (revocations close connections) and
// keeps it. If the server is down, the supervisor applies account.jwt at
// its next start.
func (a *app) pushAccount(ctx context.Context, m *auth.Material, token string) error {
	nc, err := nats.Connect(a.g.url, nats.Name("tetherctl"), nats.Timeout(a.g.timeout), nats.NoReconnect(),
		nats.UserCredentials(m.Path(auth.SystemFile)))
	if err != nil {
		return fail(ErrUnavailable, err, "revocation saved in %s, but the server at %s cannot be told now (%v): it applies at the supervisor's next start; retry 'tetherctl agent revoke' to apply it at once",
			m.Path("account.jwt"), kvconfig.MaskURLs(a.g.url), err)
	}
	defer nc.Close()
	octx, cancel := a.opCtx(ctx)
	defer cancel()
	msg, err := nc.RequestWithContext(octx, "$SYS.REQ.CLAIMS.UPDATE", []byte(token))
	if err != nil {
		return fail(ErrUnavailable, err, "push the revocation to the server: %v", err)
	}
	var rep struct {
		Data  struct{ Code int }
		Error *struct {
			Code        int
			Description string
		}
	}
	if json.Unmarshal(msg.Data, &rep) == nil && rep.Error != nil {
		return fail(nil, errors.New(rep.Error.Description), "the server refused the account update: %s", rep.Error.Description)
	}
	return nil // the server closes revoked connections as it applies the update
}

func (a *app) agentList(ctx context.Context) error {
	m, err := a.material()
	if err != nil {
		return err
	}
	ids, err := auth.Agents(a.g.dataDir)
	if err != nil {
		return fail(nil, err, "%v", err)
	}
	roles := map[string]string{}
	a.defaultCreds(m, auth.OperatorFile) // roles live in mcp_agents
	if err := a.connect(); err == nil {  // without NATS the list still shows the ids
		octx, cancel := a.opCtx(ctx)
		defer cancel()
		if kv, err := a.js.KeyValue(octx, kvconfig.BucketAgents); err == nil {
			for _, id := range ids {
				if e, err := kv.Get(octx, id); err == nil {
					if rec, err := kvconfig.DecodeAgentRecord(e.Value()); err == nil {
						roles[id] = rec.Role
					}
				}
			}
		}
	}
	if len(ids) == 0 {
		fmt.Fprintln(a.out, "no agent credentials issued yet: tetherctl agent add ID --role ROLE")
		return nil
	}
	fmt.Fprintf(a.out, "%-24s %-16s %s\n", "AGENT", "ROLE", "CREDENTIALS ISSUED")
	for _, id := range ids {
		keys, _ := m.AgentKeys(id)
		role := roles[id]
		if role == "" {
			role = "-"
		}
		fmt.Fprintf(a.out, "%-24s %-16s %d\n", id, role, len(keys))
	}
	return nil
}

// agentForget deletes a lost or gone agent's mcp_fleet record, which every
// supervisor replica follows by forgetting the agent at once (instead of
// after --forget-after). A live agent is refused: it would be back at its
// next heartbeat.
func (a *app) agentForget(ctx context.Context, id string) error {
	if err := idArg(kvconfig.KindAgent, id); err != nil {
		return err
	}
	if m, err := auth.Load(a.g.dataDir); err == nil {
		a.defaultCreds(m, auth.OperatorFile)
	}
	a.f.agent = id
	page, err := a.fetchFleet(ctx)
	if err != nil {
		return err
	}
	if len(page.Agents) == 0 {
		return fail(ErrNotFound, nil, "the supervisor knows no agent %q: nothing to forget ('tetherctl fleet' lists the agents)", id)
	}
	state := str(decodeObject(page.Agents[0]), "state")
	if state == "healthy" || state == "suspect" || state == "zombie" {
		return fail(ErrConflict, nil, "agent %s is %s: only lost or gone agents can be forgotten (a live agent is back at its next heartbeat); stop it, or revoke it with 'tetherctl agent revoke %s', then forget it", id, state, id)
	}
	octx, cancel := a.opCtx(ctx)
	defer cancel()
	kv, err := a.js.KeyValue(octx, kvconfig.BucketFleet)
	if err != nil {
		return fail(ErrUnavailable, err, "open %s: %v", kvconfig.BucketFleet, err)
	}
	if err := kv.Purge(octx, id); err != nil {
		return fail(ErrUnavailable, err, "delete %s from %s: %v", id, kvconfig.BucketFleet, err)
	}
	// The supervisor forgets it when its watcher sees the delete, unless it
	// finds the agent live (a quarantined agent that still heartbeats).
	for tick := time.NewTicker(20 * time.Millisecond); ; {
		page, err := a.fetchFleet(octx)
		if errors.Is(err, ErrNotFound) || err == nil && len(page.Agents) == 0 {
			tick.Stop()
			break
		}
		select {
		case <-octx.Done():
			tick.Stop()
			if err != nil {
				return fail(ErrUnavailable, err, "deleted %s's %s record, but cannot confirm the supervisor forgot it: %v", id, kvconfig.BucketFleet, err)
			}
			return fail(ErrConflict, nil, "the supervisor did not forget %s within --timeout %v: it still hears it (state %s); stop or revoke the agent first", id, a.g.timeout, state)
		case <-tick.C:
		}
	}
	fmt.Fprintf(a.out, "agent %s (%s) forgotten: its %s record is deleted and the supervisor drops it; it is tracked again if it heartbeats\n", id, state, kvconfig.BucketFleet)
	return nil
}

// agentRelease ends an agent's quarantine through mcp.v1.fleet.release:
// every supervisor replica releases it and the leader answers.
func (a *app) agentRelease(ctx context.Context, id string) error {
	if err := idArg(kvconfig.KindAgent, id); err != nil {
		return err
	}
	if m, err := auth.Load(a.g.dataDir); err == nil {
		a.defaultCreds(m, auth.OperatorFile)
	}
	body, _ := json.Marshal(map[string]string{"agent": id})
	data, err := a.request(ctx, a.subjects().FleetRelease(), body)
	if err != nil {
		return err
	}
	var rep struct {
		Released    bool   `json:"released"`
		Description string `json:"description"`
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		return fail(nil, err, "cannot decode the supervisor's fleet.release reply: %v", err)
	}
	if a.g.json {
		_, err := a.out.Write(append(data, '\n'))
		return err
	}
	fmt.Fprintf(a.out, "agent %s: %s\n", id, rep.Description)
	return nil
}

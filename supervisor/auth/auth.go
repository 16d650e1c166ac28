// Package auth is the embedded server's NATS JWT operator-mode material:
// on first start it creates, in <data-dir>/auth/ (directory 0700, files
// 0600), an operator, a system account, the Tether account with a signing
// key, and user credentials in the standard .creds format for the
// supervisor, operators and viewers; later starts reuse them. It signs
// per-agent credentials with exactly the permissions of the security model
// and revokes them. It owns the files under auth/ and nothing else: it does
// not run a server or open a connection.
package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
	"github.com/tether-dev/tether/kvconfig"
)

// File names under the auth directory.
const (
	DirName        = "auth"
	SupervisorFile = "supervisor.creds"
	OperatorFile   = "operator.creds"
	ViewerFile     = "viewer.creds"
	// SystemFile is a system-account user, used to push account updates
	// (revocations) to the running server.
	SystemFile = "system.creds"
	// AgentsDir holds one record per agent credential issued.
	AgentsDir = "agents"

	operatorSeedFile = "operator.nk"
	systemSeedFile   = "system-account.nk"
	accountSeedFile  = "account.nk"
	signingSeedFile  = "signing.nk"
	operatorJWTFile  = "operator.jwt"
	systemJWTFile    = "system-account.jwt"
	accountJWTFile   = "account.jwt"

	// AccountName names the Tether account in its JWT.
	AccountName = "TETHER"
)

// ErrNoMaterial reports an auth directory without the operator material.
var ErrNoMaterial = errors.New("auth: no operator material in the data directory")

// Material is the loaded operator-mode key material.
type Material struct {
	Dir         string
	Operator    nkeys.KeyPair
	OperatorJWT string
	System      nkeys.KeyPair
	SystemJWT   string
	Account     nkeys.KeyPair
	Signing     nkeys.KeyPair
	AccountJWT  string
	// Reissued names the user .creds files that Ensure re-issued because
	// an older version wrote them with other permissions (their old users
	// are revoked): the caller logs them.
	Reissued []string
}

// Path is the file name under the auth directory.
func (m *Material) Path(name string) string { return filepath.Join(m.Dir, name) }

// OperatorClaims decodes the operator JWT.
func (m *Material) OperatorClaims() (*jwt.OperatorClaims, error) {
	return jwt.DecodeOperatorClaims(m.OperatorJWT)
}

// AccountPublicKey is the Tether account's public key.
func (m *Material) AccountPublicKey() string { pk, _ := m.Account.PublicKey(); return pk }

// SystemPublicKey is the system account's public key.
func (m *Material) SystemPublicKey() string { pk, _ := m.System.PublicKey(); return pk }

// Ensure loads the material from dataDir/auth, creating it (and the three
// users' .creds files) on first use; created reports a first start. Users
// whose .creds carry other permissions than this version's (an older
// version wrote them, or another prefix) are re-issued and the old ones
// revoked (Material.Reissued): only the supervisor, at its start, does
// that.
func Ensure(dataDir, prefix string) (m *Material, created bool, err error) {
	return ensure(dataDir, prefix, true)
}

// EnsureKeep is Ensure that never re-issues existing credentials: for
// tools that run beside a live supervisor (tetherctl), whose revocation
// of a user would cut the supervisor's own connection.
func EnsureKeep(dataDir, prefix string) (m *Material, created bool, err error) {
	return ensure(dataDir, prefix, false)
}

func ensure(dataDir, prefix string, reissue bool) (m *Material, created bool, err error) {
	dir := filepath.Join(dataDir, DirName)
	m, err = Load(dataDir)
	if err == nil {
		return m, false, m.writeUsers(prefix, false, reissue)
	}
	if !errors.Is(err, ErrNoMaterial) {
		return nil, false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("auth: create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("auth: %s: %w", dir, err)
	}
	m = &Material{Dir: dir}
	if m.Operator, err = nkeys.CreateOperator(); err != nil {
		return nil, false, err
	}
	if m.System, err = nkeys.CreateAccount(); err != nil {
		return nil, false, err
	}
	if m.Account, err = nkeys.CreateAccount(); err != nil {
		return nil, false, err
	}
	if m.Signing, err = nkeys.CreateAccount(); err != nil {
		return nil, false, err
	}
	opPub, _ := m.Operator.PublicKey()
	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "tether"
	oc.SystemAccount = m.SystemPublicKey()
	if m.OperatorJWT, err = oc.Encode(m.Operator); err != nil {
		return nil, false, fmt.Errorf("auth: operator JWT: %w", err)
	}
	sc := jwt.NewAccountClaims(m.SystemPublicKey())
	sc.Name = "SYS"
	if m.SystemJWT, err = sc.Encode(m.Operator); err != nil {
		return nil, false, fmt.Errorf("auth: system account JWT: %w", err)
	}
	ac := jwt.NewAccountClaims(m.AccountPublicKey())
	ac.Name = AccountName
	sigPub, _ := m.Signing.PublicKey()
	ac.SigningKeys.Add(sigPub)
	ac.Limits.JetStreamLimits.DiskStorage = -1
	ac.Limits.JetStreamLimits.MemoryStorage = -1
	if m.AccountJWT, err = ac.Encode(m.Operator); err != nil {
		return nil, false, fmt.Errorf("auth: account JWT: %w", err)
	}
	for name, kp := range map[string]nkeys.KeyPair{operatorSeedFile: m.Operator, systemSeedFile: m.System,
		accountSeedFile: m.Account, signingSeedFile: m.Signing} {
		seed, _ := kp.Seed()
		if err := writeSecret(m.Path(name), seed); err != nil {
			return nil, false, err
		}
	}
	for name, v := range map[string]string{operatorJWTFile: m.OperatorJWT, systemJWTFile: m.SystemJWT, accountJWTFile: m.AccountJWT} {
		if err := writeSecret(m.Path(name), []byte(v)); err != nil {
			return nil, false, err
		}
	}
	return m, true, m.writeUsers(prefix, true, true)
}

// Load reads the material of dataDir/auth; ErrNoMaterial if there is none.
func Load(dataDir string) (*Material, error) {
	m := &Material{Dir: filepath.Join(dataDir, DirName)}
	if _, err := os.Stat(m.Path(operatorSeedFile)); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w (%s)", ErrNoMaterial, m.Dir)
	}
	for _, k := range []struct {
		file string
		dst  *nkeys.KeyPair
	}{{operatorSeedFile, &m.Operator}, {systemSeedFile, &m.System}, {accountSeedFile, &m.Account}, {signingSeedFile, &m.Signing}} {
		seed, err := os.ReadFile(m.Path(k.file))
		if err != nil {
			return nil, fmt.Errorf("auth: read %s: %w", m.Path(k.file), err)
		}
		if *k.dst, err = nkeys.FromSeed(seed); err != nil {
			return nil, fmt.Errorf("auth: %s is not an nkey seed: %w", m.Path(k.file), err)
		}
	}
	for _, k := range []struct {
		file string
		dst  *string
	}{{operatorJWTFile, &m.OperatorJWT}, {systemJWTFile, &m.SystemJWT}, {accountJWTFile, &m.AccountJWT}} {
		b, err := os.ReadFile(m.Path(k.file))
		if err != nil {
			return nil, fmt.Errorf("auth: read %s: %w", m.Path(k.file), err)
		}
		*k.dst = strings.TrimSpace(string(b))
	}
	return m, nil
}

// writeUsers writes the supervisor, operator, viewer and system users'
// .creds files: always on first start, otherwise only those missing.
func (m *Material) writeUsers(prefix string, overwrite, reissue bool) error {
	for _, u := range []struct {
		file, name string
		perms      jwt.Permissions
		system     bool
	}{
		{SupervisorFile, "supervisor", SupervisorPermissions(prefix), false},
		{OperatorFile, "operator", jwt.Permissions{}, false},
		{ViewerFile, "viewer", ViewerPermissions(prefix), false},
		{SystemFile, "system", jwt.Permissions{}, true},
	} {
		old := ""
		if !overwrite {
			pub, current, err := credsCurrent(m.Path(u.file), u.perms)
			if errors.Is(err, os.ErrNotExist) {
				// first start, or deleted: issue it
			} else if err != nil {
				return err
			} else if current || !reissue {
				continue
			} else {
				old = pub // issued by an older version with other permissions
			}
		}
		creds, _, err := m.userCreds(u.name, u.perms, u.system)
		if err != nil {
			return err
		}
		if err := writeSecret(m.Path(u.file), creds); err != nil {
			return err
		}
		if old != "" && !u.system {
			if _, err := m.Revoke(old); err != nil {
				return err
			}
			m.Reissued = append(m.Reissued, u.file)
		}
	}
	return nil
}

// credsCurrent reports whether the .creds file at path carries exactly
// perms, with its user's public key.
func credsCurrent(path string, perms jwt.Permissions) (pub string, current bool, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", false, err
	}
	token, err := jwt.ParseDecoratedJWT(data)
	if err != nil {
		return "", false, fmt.Errorf("auth: %s: %w", path, err)
	}
	uc, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return "", false, fmt.Errorf("auth: %s: %w", path, err)
	}
	have, _ := json.Marshal(uc.Permissions)
	want, _ := json.Marshal(perms)
	return uc.Subject, string(have) == string(want), nil
}

// userCreds signs a new user and returns its .creds file and public key.
func (m *Material) userCreds(name string, perms jwt.Permissions, system bool) ([]byte, string, error) {
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return nil, "", err
	}
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = name
	uc.Permissions = perms
	signer := m.Signing
	if system {
		signer = m.System
	} else {
		uc.IssuerAccount = m.AccountPublicKey()
	}
	token, err := uc.Encode(signer)
	if err != nil {
		return nil, "", fmt.Errorf("auth: sign user %s: %w", name, err)
	}
	seed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(token, seed)
	if err != nil {
		return nil, "", err
	}
	return creds, upub, nil
}

// AgentCreds signs a credential for agent id with AgentPermissions, with
// grants for the durable consumers it may consume. The id and every
// consumer are validated before they reach any permission.
func (m *Material) AgentCreds(id, prefix string, consumers ...ConsumerGrant) (creds []byte, userPub string, err error) {
	if err := kvconfig.ValidateID(kvconfig.KindAgent, id); err != nil {
		return nil, "", err
	}
	for _, g := range consumers {
		if err := g.Validate(); err != nil {
			return nil, "", err
		}
	}
	return m.userCreds("agent-"+id, AgentPermissions(id, prefix, consumers...), false)
}

// ErrBadConsumer reports a consumer grant that is not STREAM:DURABLE of
// identifiers.
var ErrBadConsumer = errors.New("auth: bad consumer grant")

// MaxConsumerGrants bounds the consumers one agent is granted (a heartbeat
// declares at most as many).
const MaxConsumerGrants = kvconfig.MaxAgentConsumers

// ConsumerGrant is a JetStream durable pull consumer an agent may consume:
// its stream and durable name.
type ConsumerGrant struct{ Stream, Durable string }

// ParseConsumerGrant parses STREAM:DURABLE.
func ParseConsumerGrant(s string) (ConsumerGrant, error) {
	stream, durable, ok := strings.Cut(s, ":")
	if !ok {
		return ConsumerGrant{}, fmt.Errorf("%w %q: want STREAM:DURABLE, e.g. TASKS_a7:a7", ErrBadConsumer, kvconfig.Truncate(s, 80))
	}
	g := ConsumerGrant{Stream: stream, Durable: durable}
	return g, g.Validate()
}

// Validate checks both names are identifiers (1-64 of [A-Za-z0-9_-]): no
// dot, wildcard or space can reach a permission subject.
func (g ConsumerGrant) Validate() error {
	if err := kvconfig.ValidateID("stream", g.Stream); err != nil {
		return fmt.Errorf("%w: %w", ErrBadConsumer, err)
	}
	if err := kvconfig.ValidateID("durable", g.Durable); err != nil {
		return fmt.Errorf("%w: %w", ErrBadConsumer, err)
	}
	return nil
}

// Subjects are exactly the JetStream subjects a pull consumer of the
// durable publishes to: its pull requests (replies come to the agent's
// private inbox), its info (a bind) and its acks.
func (g ConsumerGrant) Subjects() []string {
	sd := g.Stream + "." + g.Durable
	return []string{"$JS.API.CONSUMER.MSG.NEXT." + sd, "$JS.API.CONSUMER.INFO." + sd, "$JS.ACK." + sd + ".>"}
}

// jsDenyWithConsumers replaces the blanket $JS.> publish deny of an agent
// granted consumers (a deny would override its grants): every other
// JetStream API family stays denied, and anything not granted is refused
// by the allow list anyway.
var jsDenyWithConsumers = []string{"$JS.API.INFO", "$JS.API.STREAM.>", "$JS.API.CONSUMER.CREATE.>",
	"$JS.API.CONSUMER.DURABLE.>", "$JS.API.CONSUMER.DELETE.>", "$JS.API.CONSUMER.LIST.>", "$JS.API.CONSUMER.NAMES.>",
	"$JS.API.CONSUMER.PAUSE.>", "$JS.API.CONSUMER.UNPIN.>", "$JS.API.CONSUMER.LEADER.>", "$JS.API.DIRECT.>",
	"$JS.API.META.>", "$JS.API.SERVER.>", "$JS.API.ACCOUNT.>", "$JS.FC.>", "$JS.EVENT.>"}

// Revoke revokes every credential of userPub issued up to now and returns
// the re-signed account JWT (also written to account.jwt), for the running
// server's account resolver.
func (m *Material) Revoke(userPub string) (string, error) {
	ac, err := jwt.DecodeAccountClaims(m.AccountJWT)
	if err != nil {
		return "", fmt.Errorf("auth: account JWT: %w", err)
	}
	ac.RevokeAt(userPub, time.Now().Add(time.Second)) // the second: iat is whole seconds
	token, err := ac.Encode(m.Operator)
	if err != nil {
		return "", fmt.Errorf("auth: re-sign account JWT: %w", err)
	}
	if err := writeSecret(m.Path(accountJWTFile), []byte(token)); err != nil {
		return "", err
	}
	m.AccountJWT = token
	return token, nil
}

// prefixOr is prefix, or agentproto's default "mcp".
func prefixOr(prefix string) string {
	if prefix == "" {
		return "mcp"
	}
	return prefix
}

// AgentPermissions are exactly the security model's: publish its own
// resolve, resolveall and heartbeat subjects, its own command subject (the
// client's self-probes) and its private inbox; subscribe its command
// subject and private inbox; everything shared or system-level denied.
// Each granted consumer (validated by the caller: AgentCreds) adds exactly
// ConsumerGrant.Subjects and nothing else of $JS.
func AgentPermissions(id, prefix string, consumers ...ConsumerGrant) jwt.Permissions {
	p := prefixOr(prefix) + ".v1."
	var perms jwt.Permissions
	perms.Pub.Allow.Add(p+"resolve."+id+".*", p+"resolveall."+id, p+"hb."+id, p+"cmd."+id, "_INBOX_"+id+".>")
	perms.Sub.Allow.Add(p+"cmd."+id, "_INBOX_"+id+".>")
	deny := []string{"_INBOX.>", "$JS.>", "$KV.>", "$O.>", "$SYS.>", "$SRV.>"}
	perms.Sub.Deny.Add(deny...)
	if len(consumers) == 0 {
		perms.Pub.Deny.Add(deny...)
		return perms
	}
	perms.Pub.Deny.Add("_INBOX.>", "$KV.>", "$O.>", "$SYS.>", "$SRV.>")
	perms.Pub.Deny.Add(jsDenyWithConsumers...)
	for _, g := range consumers {
		perms.Pub.Allow.Add(g.Subjects()...)
	}
	return perms
}

// ViewerInboxPrefix is the viewers' own inbox prefix, the only subjects
// a viewer may subscribe: it connects with it (nats.go CustomInboxPrefix,
// nats --inbox-prefix _INBOX.viewer; tetherctl finds it in the
// credentials). The shared _INBOX.> is not a viewer's: the supervisor's
// and operators' reads of mcp_configs and their resolve answers arrive
// there in clear. (The token after "_INBOX." in a shared inbox is a
// 22-character nuid, never "viewer".)
const ViewerInboxPrefix = "_INBOX.viewer"

// ViewerPermissions read the fleet: watch and get mcp_fleet, call
// fleet.status, explain (which carries no config value) and the micro
// service's discovery, with replies on ViewerInboxPrefix only; no config
// value, no write.
func ViewerPermissions(prefix string) jwt.Permissions {
	p := prefixOr(prefix) + ".v1."
	var perms jwt.Permissions
	perms.Pub.Allow.Add(p+"fleet.status", p+"explain.>", "$SRV.>", "$JS.API.INFO",
		"$JS.API.STREAM.INFO.KV_mcp_fleet", "$JS.API.STREAM.MSG.GET.KV_mcp_fleet", "$JS.API.DIRECT.GET.KV_mcp_fleet.>",
		"$JS.API.CONSUMER.CREATE.KV_mcp_fleet.>", "$JS.API.CONSUMER.DELETE.KV_mcp_fleet.>", "$JS.API.CONSUMER.INFO.KV_mcp_fleet.>",
		"$JS.FC.KV_mcp_fleet.>", ViewerInboxPrefix+".>")
	perms.Sub.Allow.Add(ViewerInboxPrefix + ".>")
	return perms
}

// SupervisorPermissions are the supervisor's own, exactly what it uses:
// its service and heartbeat subjects; commands and probes; one reply to
// each request it receives; writes to mcp_fleet and mcp_leader only; the
// JetStream API of its four buckets to create, inspect and watch them; and
// the consumer info of any durable (read-only: the queue zombie check of
// the consumers agents declare).
// It never writes mcp_configs or mcp_agents (it only reads them), and it
// cannot delete or purge a stream. Every allowed reply prefix is also
// guarded by the reply-subject rule.
func SupervisorPermissions(prefix string) jwt.Permissions {
	p := prefixOr(prefix) + ".v1."
	var perms jwt.Permissions
	perms.Pub.Allow.Add(p+"cmd.*", p+"hb.tether-self-probe", "$SRV.>", "$KV.mcp_fleet.>", "$KV.mcp_leader.>", "$JS.API.INFO")
	// Replies (resolve answers, commands on a heartbeat's reply subject,
	// micro discovery) go to whatever reply subject a request named, one
	// reply each: NATS response permissions, since no subject pattern can
	// say "any _INBOX_<agent>". The reply-subject rule narrows them further.
	perms.Resp = &jwt.ResponsePermission{MaxMsgs: 1, Expires: time.Minute}
	for _, b := range []string{"mcp_configs", "mcp_agents", "mcp_fleet", "mcp_leader"} {
		st := "KV_" + b
		perms.Pub.Allow.Add("$JS.API.STREAM.INFO."+st, "$JS.API.STREAM.CREATE."+st, "$JS.API.STREAM.UPDATE."+st,
			"$JS.API.STREAM.MSG.GET."+st, "$JS.API.DIRECT.GET."+st, "$JS.API.DIRECT.GET."+st+".>",
			"$JS.API.CONSUMER.CREATE."+st, "$JS.API.CONSUMER.CREATE."+st+".>", "$JS.API.CONSUMER.DELETE."+st+".>",
			"$JS.API.CONSUMER.INFO."+st+".>", "$JS.FC."+st+".>")
	}
	perms.Pub.Allow.Add("$JS.API.CONSUMER.INFO.*.*")
	perms.Sub.Allow.Add(p+"resolve.>", p+"resolveall.>", p+"explain.>", p+"fleet.status", p+"fleet.release", p+"hb.*",
		"$SRV.>", "_INBOX.>")
	perms.Pub.Deny.Add("$KV.mcp_configs.>", "$KV.mcp_agents.>", "$SYS.>")
	return perms
}

// writeSecret writes data to path readable by the owner only, atomically.
func writeSecret(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("auth: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("auth: write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("auth: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("auth: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("auth: write %s: %w", path, err)
	}
	return nil
}

// RecordAgent remembers the user key issued to agent id, for revocation.
func (m *Material) RecordAgent(id, userPub string) error {
	if err := kvconfig.ValidateID(kvconfig.KindAgent, id); err != nil {
		return err
	}
	dir := m.Path(AgentsDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("auth: %s: %w", dir, err)
	}
	keys, _ := m.AgentKeys(id)
	keys = append(keys, userPub)
	return writeSecret(filepath.Join(dir, id+".pub"), []byte(strings.Join(keys, "\n")+"\n"))
}

// AgentKeys are the user keys issued to agent id (several after re-adds).
func (m *Material) AgentKeys(id string) ([]string, error) {
	if err := kvconfig.ValidateID(kvconfig.KindAgent, id); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(m.Path(AgentsDir), id+".pub"))
	if err != nil {
		return nil, fmt.Errorf("auth: agent %s has no credentials issued here: %w", id, err)
	}
	return strings.Fields(string(b)), nil
}

// Agents lists the agent records issued so far, sorted by id.
func Agents(dataDir string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(dataDir, DirName, AgentsDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("auth: list agents: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".pub"); ok && kvconfig.ValidID(id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

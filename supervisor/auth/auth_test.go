package auth

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"
)

func TestEnsureCreatesOnceAndReuses(t *testing.T) {
	dir := t.TempDir()
	m1, created, err := Ensure(dir, "")
	if err != nil || !created {
		t.Fatalf("first Ensure: created %v, %v", created, err)
	}
	m2, created, err := Ensure(dir, "")
	if err != nil || created {
		t.Fatalf("second Ensure: created %v, %v", created, err)
	}
	if m1.OperatorJWT != m2.OperatorJWT || m1.AccountPublicKey() != m2.AccountPublicKey() {
		t.Fatal("material changed between starts")
	}
	entries, _ := os.ReadDir(filepath.Join(dir, DirName))
	for _, e := range entries {
		if info, _ := e.Info(); !e.IsDir() && info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), info.Mode().Perm())
		}
	}
	ac, err := jwt.DecodeAccountClaims(m1.AccountJWT)
	if err != nil || ac.Limits.JetStreamLimits.DiskStorage != -1 || len(ac.SigningKeys) != 1 {
		t.Fatalf("account claims: %+v %v", ac, err)
	}
}

func TestAgentPermissionsAreExactlyItsOwn(t *testing.T) {
	p := AgentPermissions("a7", "")
	if want := []string{"mcp.v1.resolve.a7.*", "mcp.v1.resolveall.a7", "mcp.v1.hb.a7", "mcp.v1.cmd.a7", "_INBOX_a7.>"}; !slices.Equal([]string(p.Pub.Allow), want) {
		t.Errorf("publish allow %v, want %v", p.Pub.Allow, want)
	}
	if want := []string{"mcp.v1.cmd.a7", "_INBOX_a7.>"}; !slices.Equal([]string(p.Sub.Allow), want) {
		t.Errorf("subscribe allow %v, want %v", p.Sub.Allow, want)
	}
	for _, d := range []string{"_INBOX.>", "$JS.>", "$KV.>", "$O.>", "$SYS.>"} {
		if !slices.Contains([]string(p.Pub.Deny), d) || !slices.Contains([]string(p.Sub.Deny), d) {
			t.Errorf("%s not denied: %+v", d, p)
		}
	}
}

func TestAgentCredsValidateTheIDFirst(t *testing.T) {
	m, _, err := Ensure(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"x.>", "*", ">", "a b", "", "a.b"} {
		if creds, _, err := m.AgentCreds(id, ""); err == nil || creds != nil {
			t.Errorf("AgentCreds(%q) issued a credential", id)
		}
		if err := m.RecordAgent(id, "U"); err == nil {
			t.Errorf("RecordAgent(%q) accepted", id)
		}
	}
	creds, pub, err := m.AgentCreds("a7", "")
	if err != nil {
		t.Fatal(err)
	}
	uc, err := jwt.DecodeUserClaims(string(jwtOf(t, creds)))
	if err != nil || uc.Subject != pub || uc.IssuerAccount != m.AccountPublicKey() {
		t.Fatalf("user claims %+v %v", uc, err)
	}
	token, err := m.Revoke(pub)
	if err != nil {
		t.Fatal(err)
	}
	ac, _ := jwt.DecodeAccountClaims(token)
	if !ac.IsClaimRevoked(uc) {
		t.Fatal("the revoked credential is not revoked by the account claims")
	}
}

func jwtOf(t *testing.T, creds []byte) string {
	t.Helper()
	tok, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestSupervisorPermissionsNeverWriteOperatorBuckets(t *testing.T) {
	p := SupervisorPermissions("")
	for _, d := range []string{"$KV.mcp_configs.>", "$KV.mcp_agents.>", "$SYS.>"} {
		if !slices.Contains([]string(p.Pub.Deny), d) {
			t.Errorf("%s not denied", d)
		}
	}
	for _, a := range p.Pub.Allow {
		if a == ">" || a == "$KV.>" || a == "$JS.API.>" || a == "_INBOX.>" {
			t.Errorf("publish allow %q is too broad", a)
		}
	}
	if p.Resp == nil || p.Resp.MaxMsgs != 1 {
		t.Errorf("replies: %+v, want one response per request", p.Resp)
	}
}

// A data dir from an older version keeps credentials with other
// permissions (a viewer that could subscribe to _INBOX.>, a supervisor
// without its self-probe subject): Ensure re-issues them and revokes the
// old users; credentials that are current are reused as they are.
func TestEnsureReissuesStaleCredentials(t *testing.T) {
	dir := t.TempDir()
	m, _, err := Ensure(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	stale := ViewerPermissions("")
	stale.Sub.Allow.Add("_INBOX.>")
	creds, _, err := m.userCreds("viewer", stale, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeSecret(m.Path(ViewerFile), creds); err != nil {
		t.Fatal(err)
	}
	oldPub, _, _ := credsCurrent(m.Path(ViewerFile), stale)
	opBefore, _ := os.ReadFile(m.Path(OperatorFile))

	m2, _, err := Ensure(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m2.Reissued, []string{ViewerFile}) {
		t.Fatalf("re-issued %v, want only %s", m2.Reissued, ViewerFile)
	}
	if _, current, err := credsCurrent(m.Path(ViewerFile), ViewerPermissions("")); err != nil || !current {
		t.Fatalf("viewer.creds not re-issued with the current permissions: %v", err)
	}
	ac, _ := jwt.DecodeAccountClaims(m2.AccountJWT)
	if _, revoked := ac.Revocations[oldPub]; !revoked {
		t.Fatal("the old viewer user is not revoked")
	}
	if opAfter, _ := os.ReadFile(m.Path(OperatorFile)); string(opAfter) != string(opBefore) {
		t.Fatal("current operator credentials were re-issued")
	}
}

// tetherctl's EnsureKeep never re-issues (it runs beside a live supervisor,
// whose connection a revocation would cut).
func TestEnsureKeepNeverReissues(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := Ensure(dir, ""); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, DirName, SupervisorFile))
	m, _, err := EnsureKeep(dir, "other") // another prefix: other permissions
	if err != nil || len(m.Reissued) != 0 {
		t.Fatalf("EnsureKeep re-issued %v (%v)", m.Reissued, err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, DirName, SupervisorFile)); string(after) != string(before) {
		t.Fatal("EnsureKeep rewrote supervisor.creds")
	}
}

func TestConsumerGrantPermissions(t *testing.T) {
	for _, bad := range []string{"", "S", "S:", ":D", "S.x:D", "S:D.>", "S:*", "S:D:E", "S :D", strings.Repeat("s", 65) + ":D"} {
		if _, err := ParseConsumerGrant(bad); !errors.Is(err, ErrBadConsumer) {
			t.Errorf("ParseConsumerGrant(%q) = %v, want ErrBadConsumer", bad, err)
		}
	}
	g, err := ParseConsumerGrant("TASKS_a7:a7")
	if err != nil {
		t.Fatal(err)
	}
	plain := AgentPermissions("a7", "")
	perms := AgentPermissions("a7", "", g)
	added := map[string]bool{}
	for _, s := range perms.Pub.Allow {
		if !slices.Contains(plain.Pub.Allow, s) {
			added[s] = true
		}
	}
	want := []string{"$JS.API.CONSUMER.MSG.NEXT.TASKS_a7.a7", "$JS.API.CONSUMER.INFO.TASKS_a7.a7", "$JS.ACK.TASKS_a7.a7.>"}
	if len(added) != len(want) {
		t.Fatalf("grant added %v, want exactly %v", added, want)
	}
	for _, s := range want {
		if !added[s] {
			t.Errorf("grant lacks %s", s)
		}
	}
	if slices.Contains(perms.Pub.Deny, "$JS.>") || !slices.Contains(perms.Sub.Deny, "$JS.>") || !slices.Contains(plain.Pub.Deny, "$JS.>") {
		t.Errorf("deny lists: granted pub %v sub %v; plain pub %v", perms.Pub.Deny, perms.Sub.Deny, plain.Pub.Deny)
	}
	for _, d := range perms.Pub.Deny { // no deny may shadow a grant
		for _, s := range want {
			if subjectCovers(d, s) {
				t.Errorf("deny %s shadows grant %s", d, s)
			}
		}
	}
	m, _, err := Ensure(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.AgentCreds("a7", "", ConsumerGrant{Stream: "S.>", Durable: "D"}); !errors.Is(err, ErrBadConsumer) {
		t.Errorf("AgentCreds with a bad grant: %v", err)
	}
}

// subjectCovers reports whether pattern matches every subject literal s
// can stand for (tokens, * and a trailing >).
func subjectCovers(pattern, s string) bool {
	pt, st := strings.Split(pattern, "."), strings.Split(s, ".")
	for i, p := range pt {
		switch {
		case p == ">":
			return len(st) > i
		case i >= len(st):
			return false
		case p != "*" && p != st[i]:
			return false
		}
	}
	return len(pt) == len(st)
}

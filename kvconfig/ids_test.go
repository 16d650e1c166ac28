package kvconfig

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateID(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"a7", true}, {"coder", true}, {"A-b_9", true}, {strings.Repeat("x", 64), true},
		{"", false}, {strings.Repeat("x", 65), false}, {"a.b", false}, {"*", false}, {">", false},
		{"a b", false}, {"a\x00", false}, {"é", false}, {"a/b", false}, {"a\n", false},
	} {
		err := ValidateID(KindAgent, tc.in)
		if (err == nil) != tc.ok || ValidID(tc.in) != tc.ok {
			t.Errorf("ValidateID(%q) = %v, ValidID = %v; want ok=%v", tc.in, err, ValidID(tc.in), tc.ok)
		}
		var ie *IDError
		if err != nil && (!errors.As(err, &ie) || !strings.Contains(err.Error(), "agent id")) {
			t.Errorf("ValidateID(%q): error %v does not name the kind", tc.in, err)
		}
	}
}

func TestKeysRoundTrip(t *testing.T) {
	for _, s := range []string{"global.github", "role.coder.github", "agent.a7.github"} {
		k, err := ParseKey(s)
		if err != nil {
			t.Fatalf("ParseKey(%q): %v", s, err)
		}
		if k.String() != s {
			t.Errorf("round trip %q -> %q", s, k.String())
		}
	}
	k, _ := ParseKey("role.coder.github")
	if k.Scope() != "role:coder" || k.Kind != ScopeRole || k.Owner != "coder" || k.Server != "github" {
		t.Errorf("parsed %+v scope %q", k, k.Scope())
	}
}

func TestParseKeyRejects(t *testing.T) {
	for _, s := range []string{"", "github", "global", "global.", "global.a.b", "role.coder", "agent.a7", "agent.a7.x.y",
		"team.x.y", "role.*.github", "agent.>.x", "global.a b", "role..x", "agent.a7." + strings.Repeat("s", 65)} {
		_, err := ParseKey(s)
		if err == nil {
			t.Errorf("ParseKey(%q) accepted", s)
			continue
		}
		var ie *IDError
		if !errors.Is(err, ErrUnrecognisedKey) && !errors.As(err, &ie) {
			t.Errorf("ParseKey(%q) = %v: neither unrecognised nor an id error", s, err)
		}
	}
	if _, err := ParseKey("team.x.y"); !errors.Is(err, ErrUnrecognisedKey) || !strings.Contains(err.Error(), "unrecognised key") {
		t.Errorf("unknown scope: %v", err)
	}
}

func TestBuildersRejectBadIDs(t *testing.T) {
	for _, bad := range []string{"", "a.b", "*", ">", "a b", strings.Repeat("x", 65)} {
		if k, err := AgentKey(bad, "s"); err == nil || k.String() != "" {
			t.Errorf("AgentKey(%q) = %q, %v", bad, k.String(), err)
		}
		if k, err := RoleKey("r", bad); err == nil || k.String() != "" {
			t.Errorf("RoleKey(r, %q) = %q, %v", bad, k.String(), err)
		}
		if k, err := GlobalKey(bad); err == nil || k.String() != "" {
			t.Errorf("GlobalKey(%q) = %q, %v", bad, k.String(), err)
		}
	}
}

func TestParseScope(t *testing.T) {
	for in, want := range map[string]ScopeKind{"global": ScopeGlobal, "role:coder": ScopeRole, "role.coder": ScopeRole, "agent:a7": ScopeAgent} {
		k, _, err := ParseScope(in)
		if err != nil || k != want {
			t.Errorf("ParseScope(%q) = %v, %v", in, k, err)
		}
	}
	for _, bad := range []string{"", "team:x", "role:", "agent:a.b", "globa"} {
		if _, _, err := ParseScope(bad); err == nil {
			t.Errorf("ParseScope(%q) accepted", bad)
		}
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"global.github", "role.coder.github", "agent.a7.x", "a.b.c.d", "", "global.*", "role.>.x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKey(s)
		if err != nil {
			if k.String() != "" {
				t.Fatalf("error with a key built: %q", k.String())
			}
			return
		}
		if k.String() != s {
			t.Fatalf("round trip %q -> %q", s, k.String())
		}
		if !ValidID(k.Server) || (k.Kind != ScopeGlobal && !ValidID(k.Owner)) {
			t.Fatalf("accepted invalid ids in %q", s)
		}
	})
}

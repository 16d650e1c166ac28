package kvconfig

import (
	"strings"
	"testing"
)

func TestMaskURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"https://g.example/mcp", "https://g.example/mcp"},
		{"https://user:s3cret@g.example/mcp", "https://****@g.example/mcp"},
		{"https://ghp_TOKEN@github.com/mcp", "https://****@github.com/mcp"},
		{"https://g.example/mcp?api_key=s3cret&v=2", "https://g.example/mcp?api_key=****&v=****"},
		{"https://g.example/mcp#frag-s3cret", "https://g.example/mcp#****"},
		{"https://g.example/a%20b?x=1", "https://g.example/a%20b?x=****"},
		{"http://[::1", Masked}, // does not parse
	} {
		if got := MaskURL(tc.in); got != tc.want {
			t.Errorf("MaskURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestMaskURLPathSegments is the path rule: a segment with a known key
// prefix, or of at least 16 characters mixing letters and digits, is
// masked; ordinary paths are kept byte for byte.
func TestMaskURLPathSegments(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		// Kept.
		{"https://h.example/v1/mcp", "https://h.example/v1/mcp"},
		{"https://h.example/api/tools", "https://h.example/api/tools"},
		{"https://h.example/mcp/", "https://h.example/mcp/"},
		{"https://h.example/2025-03-26/mcp", "https://h.example/2025-03-26/mcp"},
		{"https://h.example/mcp/streamable-http", "https://h.example/mcp/streamable-http"},
		{"https://h.example/organizations/members", "https://h.example/organizations/members"}, // long, no digit
		{"https://h.example/v1/abcdef012345678", "https://h.example/v1/abcdef012345678"},       // 15: below the length
		{"https://h.example/ml/sk-learn", "https://h.example/ml/sk-learn"},                     // a prefix, too short after it
		{"https://h.example/docs/AKIA", "https://h.example/docs/AKIA"},
		{"https://h.example/a%20b/c", "https://h.example/a%20b/c"},
		// Masked: known key prefixes.
		{"https://h.example/mcp/sk-abc123def456", "https://h.example/mcp/****"},
		{"https://h.example/mcp/sk-proj-Ab12Cd34Ef56/sse", "https://h.example/mcp/****/sse"},
		{"https://h.example/gh/ghp_abcdefgh", "https://h.example/gh/****"},
		{"https://h.example/gh/github_pat_11ABCDEFG0", "https://h.example/gh/****"},
		{"https://h.example/slack/xoxb-12345678", "https://h.example/slack/****"},
		{"https://h.example/aws/AKIAIOSFODNN7EXAMPLE/x", "https://h.example/aws/****/x"},
		{"https://h.example/k/glpat-xxxxxxxx", "https://h.example/k/****"},
		// Masked: long segments mixing letters and digits.
		{"https://hooks.slack.com/services/T0123/B456/XXXXXXXXXXXXXXXXXXXX1234", "https://hooks.slack.com/services/T0123/B456/****"},
		{"https://h.example/hooks/a1b2c3d4e5f6a7b8/mcp", "https://h.example/hooks/****/mcp"},
		{"https://h.example/p/123e4567-e89b-12d3-a456-426614174000", "https://h.example/p/****"}, // a UUID: errs toward hiding
		// Judged percent-decoded; the mask itself is never encoded.
		{"https://h.example/mcp/%73k-abc123def456", "https://h.example/mcp/****"},
		// Together with userinfo, query and fragment; a token-like query key.
		{"https://u:pw@h.example/mcp/sk-abc123def456?k=v", "https://****@h.example/mcp/****?k=****"},
		{"https://h.example/mcp?a1b2c3d4e5f6a7b8c9", "https://h.example/mcp?****=****"},
		// Scheme-relative and opaque forms keep their shape.
		{"//tok@h.example/x", "//****@h.example/x"},
		{"ftp:sk-abc123def456", "ftp:****"},
	} {
		got := MaskURL(tc.in)
		if got != tc.want {
			t.Errorf("MaskURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if strings.Contains(got, "%2A") {
			t.Errorf("MaskURL(%q) = %q: the mask is percent-encoded", tc.in, got)
		}
	}
}

func TestMaskURLs(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://sup:s3cret@h1:4222, nats://t0ken@h2:4222,tls://h3", "nats://****@h1:4222,nats://****@h2:4222,tls://h3"},
		{"sup:s3cret@h1:4222,h2:4222", "****@h1:4222,h2:4222"}, // NATS adds the scheme
	} {
		if got := MaskURLs(tc.in); got != tc.want {
			t.Errorf("MaskURLs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestMaskedHidesEverySecret(t *testing.T) {
	c, err := DecodeConfig([]byte(`{"transport":"stdio","command":"srv","args":["--token","s3cret-arg"],"env":{"K":"s3cret-env"}}`))
	if err != nil {
		t.Fatal(err)
	}
	m := c.Masked()
	if m.Env["K"] != Masked || m.Args[0] != Masked || m.Args[1] != Masked || m.Command != "srv" {
		t.Fatalf("masked: %+v", m)
	}
	if c.Env["K"] != "s3cret-env" || c.Args[1] != "s3cret-arg" {
		t.Fatal("Masked changed its receiver")
	}
	h, _ := DecodeConfig([]byte(`{"url":"https://u:s3cret-pw@h.example/p?k=s3cret-q","headers":{"Authorization":"Bearer s3cret-h"}}`))
	if hm := h.Masked(); strings.Contains(hm.URL, "s3cret") || hm.Headers["Authorization"] != Masked || strings.Contains(hm.URL, "%2A") {
		t.Fatalf("masked: %+v", hm)
	}
}

func TestMaskValue(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"ENV":{"K":"s3cret"},"Headers":"s3cret","args":["a","s3cret"],"url":"https://u:s3cret@h/p?q=s3cret","timout":"3s"}`,
			`{"ENV":{"K":"****"},"Headers":"****","args":["****","****"],"timout":"3s","url":"https://****@h/p?q=****"}`},
		{`{"args":"s3cret","url":7}`, `{"args":"****","url":"****"}`},
		{`{"url":"https://h/mcp/sk-abc123def456/sse"}`, `{"url":"https://h/mcp/****/sse"}`},
		{`"s3cret"`, UnreadableValue},
		{`not json s3cret`, UnreadableValue},
	} {
		if got := string(MaskValue([]byte(tc.in))); got != tc.want {
			t.Errorf("MaskValue(%s)\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
}

func TestMaskField(t *testing.T) {
	for _, tc := range []struct{ path, v, want string }{
		{"env.GITHUB_TOKEN", `"s3cret"`, Masked},
		{"Headers.Authorization", `"Bearer s3cret"`, Masked},
		{"args", `["--token","s3cret"]`, Masked},
		{"url", `"https://u:s3cret@h/p?k=s3cret"`, `"https://****@h/p?k=****"`},
		{"url", `7`, Masked},
		{"url", `"https://h/hooks/a1b2c3d4e5f6a7b8"`, `"https://h/hooks/****"`},
		{"command", `"npx"`, `"npx"`},
		{"timeout", `"30s"`, `"30s"`},
	} {
		if got := MaskField(tc.path, tc.v); got != tc.want {
			t.Errorf("MaskField(%q, %s) = %s, want %s", tc.path, tc.v, got, tc.want)
		}
	}
}

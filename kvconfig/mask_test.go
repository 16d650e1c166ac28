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
		{"command", `"npx"`, `"npx"`},
		{"timeout", `"30s"`, `"30s"`},
	} {
		if got := MaskField(tc.path, tc.v); got != tc.want {
			t.Errorf("MaskField(%q, %s) = %s, want %s", tc.path, tc.v, got, tc.want)
		}
	}
}

package kvconfig

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeConfigValid(t *testing.T) {
	for _, in := range []string{
		`{"transport":"http","url":"https://mcp.example.com/mcp","headers":{"Authorization":"Bearer x"},"timeout":"30s"}`,
		`{"transport":"stdio","command":"npx","args":["-y","@mcp/github"],"env":{"GITHUB_TOKEN":"t"}}`,
		`{"transport":"sse","url":"http://127.0.0.1:9000/sse","retry":{"max_attempts":5,"base_delay":"500ms","max_delay":"8s","jitter":0.3}}`,
		`{"command":"uvx"}`,
		`{"url":"https://x.example"}`,
	} {
		c, err := DecodeConfig([]byte(in))
		if err != nil {
			t.Errorf("DecodeConfig(%s): %v", in, err)
			continue
		}
		if c.Transport == "" {
			t.Errorf("transport not inferred for %s", in)
		}
	}
}

func TestDecodeConfigInvalid(t *testing.T) {
	for _, tc := range []struct{ in, field, msg string }{
		{`{"transport":"http","url":"https://x","timout":"3s"}`, "timout", "unknown field"},
		{`{"transport":"http"}`, "url", "required"},
		{`{"transport":"stdio"}`, "command", "required"},
		{`{"transport":"stdio","command":"x","url":"https://x"}`, "url", "not used"},
		{`{"transport":"http","url":"https://x","command":"y"}`, "command", "not used"},
		{`{"transport":"ftp","url":"https://x"}`, "transport", "not one of"},
		{`{}`, "transport", "missing"},
		{`{"transport":"http","url":"not a url"}`, "url", "absolute"},
		{`{"transport":"http","url":"https://x","timeout":"soon"}`, "timeout", "duration"},
		{`{"transport":"http","url":"https://x","timeout":30}`, "timeout", "duration"},
		{`{"transport":"http","url":"https://x","timeout":"-1s"}`, "timeout", "negative"},
		{`{"transport":"http","url":"https://x","timeout":"2h"}`, "timeout", "longer"},
		{`{"transport":"http","url":"https://x","retry":{"jitter":1.5}}`, "retry.jitter", "outside"},
		{`{"transport":"http","url":"https://x","retry":{"max_attempts":-1}}`, "retry.max_attempts", "outside"},
		{`{"transport":"http","url":"https://x","retry":{"base_delay":"2s","max_delay":"1s"}}`, "retry.max_delay", "shorter"},
		{`{"transport":"http","url":"https://x","retry":{"tries":3}}`, "tries", "unknown field"},
		{`{"transport":"stdio","command":"x","ENV":{"TOKEN":"t"}}`, "ENV", "case-sensitive"},
		{`{"transport":"http","URL":"https://x"}`, "URL", "case-sensitive"},
		{`{"transport":"http","url":"https://x","retry":{"Max_Attempts":3}}`, "retry.Max_Attempts", "case-sensitive"},
		{`{"transport":"stdio","command":"x","env":{"BAD NAME":"v"}}`, "env.BAD NAME", "environment"},
		{`{"transport":"http","url":"https://x","headers":{"Bad:Header":"v"}}`, "headers.Bad:Header", "header"},
		{`{"transport":"stdio","command":"x","args":"y"}`, "args", "wrong type"},
		{`{"transport":"http","url":"https://x"} {}`, "", "trailing"},
		{`{"transport":"http",`, "", "malformed JSON"},
		{``, "", "empty"},
		{`[]`, "", "wrong type"},
		{`{"transport":"http","url":"https://x","headers":{"A":"` + strings.Repeat("v", 70<<10) + `"}}`, "", "bytes"},
	} {
		_, err := DecodeConfig([]byte(tc.in))
		var ce *ConfigError
		if !errors.As(err, &ce) || !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("DecodeConfig(%.60s): error %v is not a *ConfigError", tc.in, err)
			continue
		}
		if ce.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("DecodeConfig(%.60s): field %q error %q; want field %q containing %q", tc.in, ce.Field, err, tc.field, tc.msg)
		}
	}
}

// TestBadURLErrorHidesSecrets: the error quotes the URL masked by MaskURL
// (userinfo, query, fragment, a key in the path), not percent-encoded.
func TestBadURLErrorHidesSecrets(t *testing.T) {
	_, err := DecodeConfig([]byte(`{"transport":"http","url":"ftp://tok3n-user:s3cret@host/x/sk-pathk3y12345?api_key=k3y#frag-s3cret"}`))
	if err == nil || !strings.Contains(err.Error(), `"ftp://****@host/x/****?api_key=****#****"`) {
		t.Fatalf("error does not quote the masked URL: %v", err)
	}
	for _, secret := range []string{"tok3n-user", "s3cret", "k3y", "%2A"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows %q: %v", secret, err)
		}
	}
}

func TestConfigErrorNamesKeyAndRevision(t *testing.T) {
	err := &ConfigError{Bucket: BucketConfigs, Key: "global.github", Revision: 7, Field: "url", Err: errors.New("required")}
	for _, want := range []string{"mcp_configs", `"global.github"`, "revision 7", `field "url"`, "required"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
}

func TestMasked(t *testing.T) {
	h, err := DecodeConfig([]byte(`{"transport":"http","url":"https://x","headers":{"Authorization":"Bearer secret"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if h.Masked().Headers["Authorization"] != Masked || h.Headers["Authorization"] != "Bearer secret" {
		t.Errorf("headers not masked in copy only")
	}
	c, err := DecodeConfig([]byte(`{"transport":"stdio","command":"x","env":{"TOKEN":"s3cr3t"}}`))
	if err != nil {
		t.Fatal(err)
	}
	m := c.Masked()
	if m.Env["TOKEN"] != Masked || c.Env["TOKEN"] != "s3cr3t" {
		t.Errorf("masked %v original %v", m.Env, c.Env)
	}
}

func FuzzDecodeConfig(f *testing.F) {
	for _, s := range []string{`{"transport":"http","url":"https://x"}`, `{"command":"x","args":["a"]}`, `{"retry":{"jitter":0.5}}`, `{`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeConfig(b)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *ConfigError", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("decoded config does not validate: %v", err)
		}
	})
}

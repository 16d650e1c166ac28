package kvconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// validConfigs decode; FuzzDecodeConfig starts from them too.
var validConfigs = []string{
	`{"transport":"http","url":"https://mcp.example.com/mcp","headers":{"Authorization":"Bearer x"},"timeout":"30s"}`,
	`{"transport":"stdio","command":"npx","args":["-y","@mcp/github"],"env":{"GITHUB_TOKEN":"t"}}`,
	`{"transport":"sse","url":"http://127.0.0.1:9000/sse","retry":{"max_attempts":5,"base_delay":"500ms","max_delay":"8s","jitter":0.3}}`,
	`{"command":"uvx"}`,
	`{"url":"https://x.example"}`,
	`{"command":"x","env":{"TOKEN":"a","token":"b"},"args":[]}`,
	`{"url":"https://x.example","retry":null,"env":null,"headers":{}}`,
}

func TestDecodeConfigValid(t *testing.T) {
	for _, in := range validConfigs {
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

// invalidConfigs each fail; field is the first problem's path and msg is
// in the error.
var invalidConfigs = []struct{ in, field, msg string }{
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
	{`{"transport":"http","url":"https://x","retry":{"tries":3}}`, "retry.tries", "unknown field (check the spelling; retry's fields are max_attempts, base_delay, max_delay, jitter)"},
	{`{"transport":"http","url":"https://x","retry":{"max_attemps":3}}`, "retry.max_attemps", "retry's fields are max_attempts, base_delay, max_delay, jitter)"},
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
	// Duplicate keys, at every level and however they are escaped.
	{`{"url":"a","url":"b"}`, "url", "duplicate key"},
	{`{"url":"https://x","url":"https://evil.example"}`, "url", "duplicate key (it appears more than once); keep exactly one"},
	{`{"url":"https://x","\u0075rl":"https://evil.example"}`, "url", "duplicate key"},
	{`{"command":"x","env":{"TOKEN":"a","TOKEN":"b"}}`, "env.TOKEN", "duplicate key"},
	{`{"url":"https://x","headers":{"Authorization":"a","Authorization":"b"}}`, "headers.Authorization", "duplicate key"},
	{`{"url":"https://x","retry":{"jitter":0.1,"jitter":0.2}}`, "retry.jitter", "duplicate key"},
	{`{"url":"https://x","retry":{"max_attempts":1},"retry":{"max_attempts":9}}`, "retry", "duplicate key"},
	// Per-element and per-entry type errors name their path.
	{`{"command":"x","args":["a",1]}`, "args[1]", "wrong type: JSON number where string is expected"},
	{`{"command":"x","env":{"A":true}}`, "env.A", "wrong type: JSON bool where string is expected"},
	{`{"url":"https://x","retry":{"max_attempts":"3"}}`, "retry.max_attempts", "wrong type: JSON string where int is expected"},
	{`{"url":"https://x","retry":[]}`, "retry", "wrong type: JSON array where kvconfig.RetryConfig is expected"},
	{`null`, "", "wrong type: JSON null where an object"},
}

func TestDecodeConfigInvalid(t *testing.T) {
	for _, tc := range invalidConfigs {
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

// Every independent problem of a value is reported at once, in document
// order and then in the order of the semantic rules.
func TestDecodeConfigAllProblems(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string // field: substring, in order
	}{
		{`{"transport":"http","retry":{"max_attemps":3},"env":{"TOKEN":"a","TOKEN":"b"}}`, []string{
			"retry.max_attemps: unknown field (check the spelling; retry's fields are",
			"env.TOKEN: duplicate key",
			"url: required for transport http",
		}},
		// Type errors per field; a url that does not decode is not also
		// reported as a missing transport.
		{`{"url":5,"timeout":30,"args":["a",1],"retry":{"jitter":"x","max_attempts":"y"}}`, []string{
			"url: wrong type: JSON number where string is expected",
			"timeout: 30 is not a duration",
			"args[1]: wrong type",
			"retry.jitter: wrong type: JSON string where float64 is expected",
			"retry.max_attempts: wrong type: JSON string where int is expected",
		}},
		{`{"transport":"stdio","url":"https://x","headers":{"A":"b"},"timeout":"-1s","retry":{"max_attempts":101,"jitter":2},"env":{"1X":"v","OK":"v","b c":"v"}}`, []string{
			"command: required for transport stdio",
			"url: not used by transport stdio",
			"headers: not used by transport stdio",
			"env.1X: \"1X\" is not an environment variable name",
			"env.b c: \"b c\" is not an environment variable name",
			"timeout: -1s is negative",
			"retry.max_attempts: 101 is outside 0..100",
			"retry.jitter: 2 is outside [0,1]",
		}},
		{`{"URL":"https://x","Command":"y","command":"z","timout":"1s","timout":"2s"}`, []string{
			"URL: unknown field (names are case-sensitive;",
			"Command: unknown field (names are case-sensitive;",
			"timout: unknown field (check the spelling;",
		}},
	} {
		_, err := DecodeConfig([]byte(tc.in))
		got := Problems(err)
		var lines []string
		for _, p := range got {
			lines = append(lines, p.Field+": "+p.Err.Error())
		}
		ok := len(lines) == len(tc.want)
		for i := 0; ok && i < len(lines); i++ {
			ok = strings.HasPrefix(lines[i], tc.want[i])
		}
		if !ok {
			t.Errorf("DecodeConfig(%s):\n got %q\nwant %q", tc.in, lines, tc.want)
		}
		var first *ConfigError
		if !errors.As(err, &first) || first != got[0] || !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("DecodeConfig(%s): errors.As/Is do not find the first problem in %v", tc.in, err)
		}
	}
}

// The error texts operators see, exactly.
func TestDecodeConfigMessages(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"url":"a","url":"b"}`,
			`kvconfig: invalid config: 2 problems: field "url": duplicate key (it appears more than once); keep exactly one; field "url": "a" is not an absolute http:// or https:// URL`},
		{`{"command":"x","env":{"TOKEN":"a","TOKEN":"b"}}`,
			`kvconfig: invalid config: field "env.TOKEN": duplicate key (it appears more than once); keep exactly one`},
		{`{"url":"https://x","retry":{"max_attemps":3}}`,
			`kvconfig: invalid config: field "retry.max_attemps": unknown field (check the spelling; retry's fields are max_attempts, base_delay, max_delay, jitter)`},
		{`{"url":"https://x","timout":"3s"}`,
			`kvconfig: invalid config: field "timout": unknown field (check the spelling; fields are transport, command, args, env, url, headers, timeout, retry, idempotent_tools)`},
		{`{"transport":"http","retry":{"max_attemps":3},"env":{"TOKEN":"a","TOKEN":"b"}}`,
			`kvconfig: invalid config: 3 problems: field "retry.max_attemps": unknown field (check the spelling; retry's fields are max_attempts, base_delay, max_delay, jitter); ` +
				`field "env.TOKEN": duplicate key (it appears more than once); keep exactly one; field "url": required for transport http: add "url":"https://..."`},
	} {
		if _, err := DecodeConfig([]byte(tc.in)); err == nil || err.Error() != tc.want {
			t.Errorf("DecodeConfig(%s):\n got %v\nwant %s", tc.in, err, tc.want)
		}
	}
}

// A value with very many problems lists MaxProblems of them and counts the
// rest, so no message, log line or reply is unbounded.
func TestDecodeConfigProblemsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"url":"https://x"`)
	for i := range 30 {
		fmt.Fprintf(&b, `,"bad%d":1`, i)
	}
	b.WriteString("}")
	_, err := DecodeConfig([]byte(b.String()))
	var ces *ConfigErrors
	if !errors.As(err, &ces) || len(ces.Problems) != MaxProblems || ces.More != 30-MaxProblems || ces.Len() != 30 {
		t.Fatalf("30 unknown fields: %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, ": 30 problems: ") || !strings.HasSuffix(msg, "; and 10 more") || strings.Contains(msg, "bad20") {
		t.Errorf("message: %s", msg)
	}
}

func TestValidateReportsEveryRule(t *testing.T) {
	c := &ServerConfig{Transport: "stdio", URL: "https://x", Timeout: Duration(-1), Retry: &RetryConfig{MaxAttempts: -1}}
	var fields []string
	for _, p := range Problems(c.Validate()) {
		fields = append(fields, p.Field)
	}
	if want := []string{"command", "url", "timeout", "retry.max_attempts"}; !slices.Equal(fields, want) {
		t.Errorf("Validate problems %q, want %q", fields, want)
	}
	if err := (&ServerConfig{URL: "https://x"}).Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func TestDecodeAgentRecord(t *testing.T) {
	if r, err := DecodeAgentRecord([]byte(`{"role":"coder"}`)); err != nil || r.Role != "coder" {
		t.Fatalf("valid record: %+v %v", r, err)
	}
	if r, err := DecodeAgentRecord([]byte(`{"role":"coder","consumers":["TASKS_a7:a7","S:D"]}`)); err != nil ||
		r.Role != "coder" || len(r.Consumers) != 2 || r.Consumers[1] != "S:D" {
		t.Fatalf("valid record with consumers: %+v %v", r, err)
	}
	many := `{"role":"coder","consumers":["S:D0"` + strings.Repeat(`,"S:D0"`, MaxAgentConsumers) + `]}`
	for _, tc := range []struct{ in, field, msg string }{
		{`{"role":"coder","role":"admin"}`, "role", "duplicate key"},
		{`{"role":"coder","\u0072ole":"admin"}`, "role", "duplicate key"},
		{`{"rol":"coder"}`, "rol", "unknown field (check the spelling; fields are role, consumers)"},
		{`{"role":"coder","consumers":"S:D"}`, "consumers", "wrong type"},
		{`{"role":"coder","consumers":[5]}`, "consumers", "wrong type"},
		{`{"role":"coder","consumers":["SD"]}`, "consumers[0]", "want \"<stream>:<durable>\""},
		{`{"role":"coder","consumers":["S:D","S.x:D"]}`, "consumers[1]", "stream"},
		{`{"role":"coder","consumers":["S:>"]}`, "consumers[0]", "durable"},
		{`{"role":"coder","consumers":["S:D","S:D"]}`, "consumers[1]", "more than once"},
		{many, "consumers", "at most 16"},
		{`{"Role":"coder"}`, "Role", "names are case-sensitive"},
		{`{"role":5}`, "role", "wrong type: JSON number where string is expected"},
		{`{"role":"a.b"}`, "role", "role"},
		{`{}`, "role", "empty"},
		{`{"role":"coder"} {}`, "", "trailing data"},
		{`["coder"]`, "", `wrong type: JSON array where an object such as {"role":"<role>"} is expected`},
		{`{"role":`, "", "malformed JSON"},
		{``, "", "empty"},
	} {
		_, err := DecodeAgentRecord([]byte(tc.in))
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Bucket != BucketAgents || ce.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("DecodeAgentRecord(%s): %v; want field %q containing %q in bucket %s", tc.in, err, tc.field, tc.msg, BucketAgents)
		}
	}
}

func TestDuplicateKeys(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"a":1,"b":{"a":1,"a":2},"a":3,"\u0061":4,"c":5,"c":6}`, "a c"}, // the top level only
		{`{"a":1,"b":2}`, ""},
		{`[1,1]`, ""},
		{`{"a":1,"a":2,"b":`, "a"}, // a syntax error ends the scan
		{``, ""},
	} {
		if got := strings.Join(DuplicateKeys([]byte(tc.in)), " "); got != tc.want {
			t.Errorf("DuplicateKeys(%s) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzDecodeConfig: DecodeConfig never panics; every failure is a bounded
// list of *ConfigError; an accepted value validates, and re-encoding it
// decodes to an equal config.
func FuzzDecodeConfig(f *testing.F) {
	for _, s := range validConfigs {
		f.Add([]byte(s))
	}
	for _, tc := range invalidConfigs {
		if len(tc.in) < 4<<10 {
			f.Add([]byte(tc.in))
		}
	}
	for _, s := range []string{`{"retry":{"jitter":0.5}}`, `{`, `{"command":"x","args":["a"],"args":["b"]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeConfig(b)
		if err != nil {
			probs := Problems(err)
			if len(probs) == 0 || len(probs) > MaxProblems || !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v: %d problems", err, len(probs))
			}
			if n := len(err.Error()); n > 16<<10 {
				t.Fatalf("error message of %d bytes", n)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("decoded config does not validate: %v", err)
		}
		enc, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", c, err)
		}
		again, err := DecodeConfig(enc)
		if err != nil {
			t.Fatalf("re-encoded %s does not decode: %v", enc, err)
		}
		if !reflect.DeepEqual(c, again) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v (via %s)", c, again, enc)
		}
	})
}

// ConsumerGranted is exactly the valid record's consumers: not another
// agent's, not a prefix of one, none for a record without the field, an
// invalid record or no record; a changed record takes effect.
func TestConsumerGranted(t *testing.T) {
	ix := NewIndex()
	ix.ApplyAgent("a7", 1, OpPut, []byte(`{"role":"coder","consumers":["TASKS_a7:a7","S:D"]}`))
	ix.ApplyAgent("a8", 2, OpPut, []byte(`{"role":"coder"}`))
	ix.ApplyAgent("a9", 3, OpPut, []byte(`{"role":"coder","consumers":["S:D"],"x":1}`))
	for _, tc := range []struct {
		agent, stream, durable string
		want                   bool
	}{
		{"a7", "TASKS_a7", "a7", true}, {"a7", "S", "D", true},
		{"a7", "TASKS_a", "7:a7", false}, {"a7", "TASKS_a7", "a", false}, {"a7", "S:D", "", false},
		{"a8", "TASKS_a7", "a7", false}, {"a8", "S", "D", false},
		{"a9", "S", "D", false}, {"nobody", "S", "D", false},
	} {
		if got := ix.ConsumerGranted(tc.agent, tc.stream, tc.durable); got != tc.want {
			t.Errorf("ConsumerGranted(%s, %s, %s) = %v, want %v", tc.agent, tc.stream, tc.durable, got, tc.want)
		}
	}
	ix.ApplyAgent("a7", 4, OpPut, []byte(`{"role":"coder"}`))
	if ix.ConsumerGranted("a7", "S", "D") {
		t.Error("a grant removed from the record still holds")
	}
}

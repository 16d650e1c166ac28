package kvconfig

import (
	"errors"
	"strings"
	"testing"
)

// idempotent_tools decodes strictly and each name is validated, with the
// broken entry's index in the message.
func TestIdempotentToolsDecode(t *testing.T) {
	c, err := DecodeConfig([]byte(`{"url":"https://mcp.example/mcp","idempotent_tools":["search_issues","get.file","repo/list"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.IdempotentTools, ",") != "search_issues,get.file,repo/list" {
		t.Fatalf("idempotent_tools %q", c.IdempotentTools)
	}
	long := strings.Repeat("a", MaxToolNameLen+1)
	for _, tc := range []struct{ body, want string }{
		{`{"url":"https://x/mcp","idempotent_tools":"search"}`, `idempotent_tools`},
		{`{"url":"https://x/mcp","idempotent_tools":[1]}`, `idempotent_tools[0]`},
		{`{"url":"https://x/mcp","idempotent_tools":["ok",""]}`, `idempotent_tools[1]`},
		{`{"url":"https://x/mcp","idempotent_tools":["bad name"]}`, `idempotent_tools[0]`},
		{`{"url":"https://x/mcp","idempotent_tools":["` + long + `"]}`, `idempotent_tools[0]`},
		{`{"url":"https://x/mcp","idempotent_tools":[` + strings.Repeat(`"a",`, MaxIdempotentTools) + `"a"]}`, `more than 256`},
	} {
		_, err := DecodeConfig([]byte(tc.body))
		var ce *ConfigErrors
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.60s: %v, want an error naming %s", tc.body, err, tc.want)
		}
	}
}

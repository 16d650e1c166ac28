package kvconfig_test

import (
	"errors"
	"fmt"

	"github.com/tether-dev/tether/kvconfig"
)

// Keys name their scope; anything that could become a wildcard or another
// token is rejected.
func ExampleParseKey() {
	for _, s := range []string{"global.github", "role.coder.github", "agent.a7.github", "agent.x.>"} {
		k, err := kvconfig.ParseKey(s)
		if err != nil {
			fmt.Println("error:", err != nil)
			continue
		}
		fmt.Println(k.Scope(), k.Server)
	}
	// Output:
	// global github
	// role:coder github
	// agent:a7 github
	// error: true
}

// Config values are decoded strictly: a misspelt field is an error, not a
// silently ignored setting.
func ExampleDecodeConfig() {
	c, err := kvconfig.DecodeConfig([]byte(`{"transport":"http","url":"https://g.example/mcp","timeout":"30s"}`))
	fmt.Println(c.Transport, c.URL, c.Timeout.D(), err)
	_, err = kvconfig.DecodeConfig([]byte(`{"url":"https://g.example/mcp","timout":"3s"}`))
	fmt.Println(err != nil)
	// Output:
	// http https://g.example/mcp 30s <nil>
	// true
}

// The most specific existing scope wins entirely; a malformed winner is an
// error naming its key, never a fall-through to a less specific scope.
func ExampleIndex_Resolve() {
	ix := kvconfig.NewIndex()
	ix.ApplyAgent("a7", 1, kvconfig.OpPut, []byte(`{"role":"coder"}`))
	ix.ApplyConfig("global.github", 1, kvconfig.OpPut, []byte(`{"url":"https://global.example/mcp"}`))
	ix.ApplyConfig("role.coder.github", 2, kvconfig.OpPut, []byte(`{"url":"https://coder.example/mcp"}`))
	ix.ApplyConfig("agent.a9.github", 3, kvconfig.OpPut, []byte(`{"url":"https://a9.example/mcp","timout":"1s"}`))
	ix.MarkReady(kvconfig.BucketConfigs) // a Store marks each bucket once its initial values are in
	ix.MarkReady(kvconfig.BucketAgents)

	for _, agent := range []string{"a7", "b1", "a9"} {
		r, err := ix.Resolve(agent, "github")
		var bad *kvconfig.ConfigError
		switch {
		case errors.As(err, &bad):
			fmt.Println(agent, "invalid:", bad.Key, "revision", bad.Revision)
		case err != nil:
			fmt.Println(agent, err)
		default:
			fmt.Println(agent, r.Scope, r.Config.URL)
		}
	}
	_, err := ix.Resolve("a7", "jira")
	fmt.Println(errors.Is(err, kvconfig.ErrNotFound))
	// Output:
	// a7 role:coder https://coder.example/mcp
	// b1 global https://global.example/mcp
	// a9 invalid: agent.a9.github revision 3
	// true
}

package kvconfig

import (
	"fmt"
	"testing"
)

// BenchmarkResolve resolves against an index of 10k keys: 1,000 agents with
// roles, 10 servers, overrides at every scope.
func BenchmarkResolve(b *testing.B) {
	ix := readyIndex()
	rev := uint64(0)
	next := func() uint64 { rev++; return rev }
	for a := 0; a < 1000; a++ {
		ix.ApplyAgent(fmt.Sprintf("agent-%d", a), next(), OpPut, []byte(fmt.Sprintf(`{"role":"role-%d"}`, a%20)))
	}
	n := 0
	for s := 0; s < 10; s++ {
		ix.ApplyConfig(fmt.Sprintf("global.srv-%d", s), next(), OpPut, value("g", present))
		n++
		for r := 0; r < 20; r++ {
			ix.ApplyConfig(fmt.Sprintf("role.role-%d.srv-%d", r, s), next(), OpPut, value("r", present))
			n++
		}
	}
	for a := 0; n < 10000; a++ {
		ix.ApplyConfig(fmt.Sprintf("agent.agent-%d.srv-%d", a%1000, a/1000), next(), OpPut, value("a", present))
		n++
	}
	if ix.Len() != 10000 {
		b.Fatalf("index holds %d keys", ix.Len())
	}
	agents := make([]string, 1000)
	for i := range agents {
		agents[i] = fmt.Sprintf("agent-%d", i)
	}
	servers := make([]string, 10)
	for i := range servers {
		servers[i] = fmt.Sprintf("srv-%d", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := ix.Resolve(agents[i%1000], servers[i%10]); err != nil {
			b.Fatal(err)
		}
	}
}

package fleet

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
)

// configsTracker is a tracker without a connection, for ingest alone.
func configsTracker() *tracker {
	cmd, _ := newDispatcher(nil, nil, "mcp", nil, zerolog.Nop(), nil)
	return newTracker(DefaultConfig(), "mcp", cmd, zerolog.Nop(), nil)
}

func configsBeat(t *tracker, id string, seq uint64, configs string) {
	body := fmt.Sprintf(`{"agent":%q,"instance":"%s-i1","seq":%d,"configs":%s}`, id, id, seq, configs)
	t.handleHeartbeat(&nats.Msg{Subject: agentproto.Subjects{}.Heartbeat(id), Data: []byte(body)})
}

func configsOf(t *tracker, id string) []serverApplied {
	sh := t.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.m[id].configs
}

// TestConfigsSharedAcrossAgents: agents of a shard that report the same
// configs object hold one decoded copy; one that changes its configs gets
// its own, and the others keep theirs unchanged.
func TestConfigsSharedAcrossAgents(t *testing.T) {
	tr := configsTracker()
	const same = `{"github":{"revision":12,"applied":true},"jira":{"revision":3,"applied":true}}`
	// Ids in one shard, so they meet the same table.
	var ids []string
	want := tr.shard("a0")
	for i := 0; len(ids) < 3; i++ {
		if id := fmt.Sprintf("a%d", i); tr.shard(id) == want {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		configsBeat(tr, id, 1, same)
	}
	c0, c1, c2 := configsOf(tr, ids[0]), configsOf(tr, ids[1]), configsOf(tr, ids[2])
	if len(c0) != 2 || &c0[0] != &c1[0] || &c0[0] != &c2[0] {
		t.Fatalf("the same configs are not shared: %p %p %p (%d entries)", c0, c1, c2, len(c0))
	}

	configsBeat(tr, ids[1], 2, `{"github":{"revision":13,"applied":true},"jira":{"revision":3,"applied":true}}`)
	c1 = configsOf(tr, ids[1])
	if &c1[0] == &c0[0] {
		t.Fatal("changed configs still share the old copy")
	}
	rev := func(cs []serverApplied, server string) uint64 {
		for _, c := range cs {
			if c.server == server {
				return c.Revision
			}
		}
		return 0
	}
	if rev(c1, "github") != 13 || rev(configsOf(tr, ids[0]), "github") != 12 || rev(configsOf(tr, ids[2]), "github") != 12 {
		t.Fatalf("github revisions %d, %d, %d; want 12, 13, 12", rev(configsOf(tr, ids[0]), "github"), rev(c1, "github"), rev(configsOf(tr, ids[2]), "github"))
	}
	st, _ := tr.lookup(ids[0])
	if st.Configs["github"].Revision != 12 || st.Configs["jira"].Revision != 3 {
		t.Fatalf("status configs %+v", st.Configs)
	}
}

// TestConfigsSharedTableBounded: an agent reporting a new configs object
// every heartbeat does not grow its shard's table past maxSharedConfigs,
// and an object over maxSharedConfigBytes is decoded but not kept.
func TestConfigsSharedTableBounded(t *testing.T) {
	tr := configsTracker()
	for seq := uint64(1); seq <= 5*maxSharedConfigs; seq++ {
		configsBeat(tr, "h1", seq, fmt.Sprintf(`{"github":{"revision":%d,"applied":true}}`, seq))
		if n := len(tr.shard("h1").configs); n > maxSharedConfigs {
			t.Fatalf("after %d distinct configs the table holds %d, over %d", seq, n, maxSharedConfigs)
		}
		if got := configsOf(tr, "h1"); len(got) != 1 || got[0].Revision != seq {
			t.Fatalf("heartbeat %d: configs %+v", seq, got)
		}
	}
	var big []byte
	for i := 0; len(big) <= maxSharedConfigBytes; i++ {
		big = fmt.Appendf(big, `,"server-%03d":{"revision":1,"applied":true}`, i)
	}
	big[0] = '{'
	big = append(big, '}')
	configsBeat(tr, "h2", 1, string(big))
	if got := configsOf(tr, "h2"); len(got) < 20 {
		t.Fatalf("a %d-byte configs object: %d entries decoded", len(big), len(got))
	}
	for _, c := range tr.shard("h2").configs {
		if c.raw == string(big) {
			t.Fatalf("a %d-byte configs object is kept in the shared table", len(big))
		}
	}
}

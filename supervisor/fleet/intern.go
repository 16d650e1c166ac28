package fleet

import (
	"strings"
	"sync"

	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// Interning keeps the per-agent cost of values a fleet shares (connection
// states, error classes, server names) to a string header.

// internConn returns the canonical connection state, reusing cur when equal.
func internConn(cur, s string) string {
	if s == cur {
		return cur
	}
	switch s {
	case agentproto.ConnConnected:
		return agentproto.ConnConnected
	case agentproto.ConnReconnecting:
		return agentproto.ConnReconnecting
	case agentproto.ConnRebuilding:
		return agentproto.ConnRebuilding
	case agentproto.ConnClosed:
		return agentproto.ConnClosed
	case "":
		return ""
	}
	return internSmall(cur, s)
}

// maxInterned bounds the intern table; past it, values are stored as
// truncated copies (a hostile agent cannot grow the table without bound).
const maxInterned = 4096

var interned = struct {
	sync.RWMutex
	m map[string]string
}{m: map[string]string{}}

// internKey returns the shared copy of k if one is interned (a server name
// seen before), else a new string: the heartbeat path reads a fleet's few
// server names without allocating them again.
func internKey(k []byte) string {
	interned.RLock()
	v, ok := interned.m[string(k)]
	interned.RUnlock()
	if ok {
		return v
	}
	return string(k)
}

// internSmall returns a shared copy of s (at most 64 bytes), reusing cur
// when it is equal.
func internSmall(cur, s string) string {
	if s == cur {
		return cur
	}
	s = kvconfig.Truncate(s, 64)
	interned.RLock()
	v, ok := interned.m[s]
	interned.RUnlock()
	if ok {
		return v
	}
	interned.Lock()
	defer interned.Unlock()
	if v, ok := interned.m[s]; ok {
		return v
	}
	c := strings.Clone(s)
	if len(interned.m) < maxInterned {
		interned.m[c] = c
	}
	return c
}

package agentproto

import (
	"sync/atomic"
)

// CallStats counts calls for the heartbeat's "calls" object. It is safe for
// concurrent use; the zero value is ready, and a nil *CallStats counts
// nothing.
type CallStats struct {
	ok, retried, failed, unknown atomic.Uint64
	lastClass                    atomic.Uint32
}

// CallCounts is a snapshot of CallStats, in the heartbeat's JSON shape
// ("calls": {"ok","retried","failed","unknown","last_error_class"}).
type CallCounts struct {
	// OK counts calls that succeeded, on the first attempt or after retries.
	OK uint64 `json:"ok"`
	// Retried counts retries (waits started), not calls: a call that
	// succeeded on its third attempt adds 2.
	Retried uint64 `json:"retried"`
	// Failed counts calls Retry gave up on.
	Failed uint64 `json:"failed"`
	// Unknown counts attempt errors no classification row matched (retried
	// like transient ones); if it grows, the table needs a row.
	Unknown uint64 `json:"unknown"`
	// LastErrorClass is the class of the latest failed attempt:
	// "transient", "permanent" or "unknown"; omitted if none yet.
	LastErrorClass string `json:"last_error_class,omitempty"`
}

// Snapshot returns the counters. Each is read atomically; the set is not
// one atomic picture.
func (s *CallStats) Snapshot() CallCounts {
	if s == nil {
		return CallCounts{}
	}
	return CallCounts{
		OK:             s.ok.Load(),
		Retried:        s.retried.Load(),
		Failed:         s.failed.Load(),
		Unknown:        s.unknown.Load(),
		LastErrorClass: Class(s.lastClass.Load()).String(),
	}
}

func (s *CallStats) addOK() {
	if s != nil {
		s.ok.Add(1)
	}
}

func (s *CallStats) addRetried() {
	if s != nil {
		s.retried.Add(1)
	}
}

func (s *CallStats) addFailed() {
	if s != nil {
		s.failed.Add(1)
	}
}

func (s *CallStats) addError(c Class) {
	if s == nil {
		return
	}
	s.lastClass.Store(uint32(c))
	if c == ClassUnknown {
		s.unknown.Add(1)
	}
}

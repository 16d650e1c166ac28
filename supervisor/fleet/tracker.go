package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/internal/logsample"
	"github.com/tether-dev/tether/kvconfig"
)

// numShards splits the fleet map so heartbeats for different agents rarely
// contend on one lock.
const numShards = 64

// Discard reasons: the reason label values of
// tether_heartbeats_discarded_total.
const (
	DiscardSubject  = "bad_subject"
	DiscardJSON     = "bad_json"
	DiscardSpoofed  = "agent_mismatch"
	DiscardInstance = "no_instance"
	DiscardOldSeq   = "old_seq"
	DiscardDropped  = "slow_consumer"
	// DiscardUnregistered: admission refused a new id (Config.Admit).
	DiscardUnregistered = "unregistered"
	// DiscardFull: a new id past Config.MaxAgents.
	DiscardFull = "fleet_full"
)

// Dirty bits of an agent record: what changed since the last mcp_fleet write.
const (
	dirtyState uint8 = 1 << iota // state may differ from the persisted one
	dirtyOther                   // pending commands, instance, flags, configs
)

// hbIn is the part of a heartbeat the supervisor reads; unknown fields are
// ignored. Configs are kept raw and only decoded when they change.
type hbIn struct {
	Agent      string          `json:"agent"`
	Instance   string          `json:"instance"`
	Seq        uint64          `json:"seq"`
	SentAt     string          `json:"sent_at"`
	IntervalMS int64           `json:"interval_ms"`
	ProbeAck   string          `json:"probe_ack"`
	Acks       []string        `json:"acks"`
	Conn       connInfo        `json:"conn"`
	Configs    json.RawMessage `json:"configs"`
	Calls      *callInfo       `json:"calls"`
	Consumers  []consumerIn    `json:"consumers"`
	Goodbye    bool            `json:"goodbye"`
	// Servers is per MCP server the agent calls (servers.go).
	Servers map[string]serverIn `json:"servers"`

	// Set by handleHeartbeat, not decoded: the configs' hash, whether they
	// differ from the agent's last ones, and if so their decoded entries.
	configsHash    uint64
	configsChanged bool
	applied        []serverApplied
}

// connInfo is the connection part of a heartbeat.
type connInfo struct {
	State      string  `json:"state"`
	Reconnects uint64  `json:"reconnects"`
	RTTMS      float64 `json:"rtt_ms"`
}

// callInfo is the retry layer's counters (agentproto.CallCounts shape).
type callInfo struct {
	OK             uint64 `json:"ok"`
	Retried        uint64 `json:"retried"`
	Failed         uint64 `json:"failed"`
	Unknown        uint64 `json:"unknown,omitempty"`
	LastErrorClass string `json:"last_error_class,omitempty"`
}

// appliedConfig is what an agent reports running for one server.
type appliedConfig struct {
	Revision uint64 `json:"revision"`
	Applied  bool   `json:"applied"`
	Error    string `json:"error,omitempty"`
	Stale    bool   `json:"stale,omitempty"`
}

type serverApplied struct {
	server string
	appliedConfig
}

// probeRec is one unanswered probe: its sequence and monotonic send time.
type probeRec struct {
	seq uint64
	at  int64
}

// pendingCmd is a command waiting for the agent's ack.
type pendingCmd struct {
	cmd      agentproto.Command
	created  int64 // unix ns
	lastSent int64 // monotonic ns; 0 means due now
	sends    uint32
	queued   bool // a recovery command waiting for the fleet-wide rate
	recovery bool
}

// agent is the supervisor's record of one agent. Guarded by its shard's
// lock. Times are monotonic ns on the tracker's clock unless named *Wall.
// What a healthy agent of a steady fleet does not use is in rare (nil
// until first set): the common record stays in the 288-byte size class
// (TestAgentSizeClass).
type agent struct {
	id, instance           string
	seq                    uint64
	heard, heardWall       int64
	joined                 int64 // first heard (monotonic); see established
	since                  int64
	probeNext              int64
	probeAcked             uint64
	probeSent              uint64 // the latest probe sent to this agent
	probes                 []probeRec
	configs                []serverApplied // may be shared with other agents (configs.go): replaced, never changed in place
	servers                *[]agentServer  // per MCP server it calls, by name (servers.go); nil: none
	configsHash            uint64
	conn                   connInfo
	calls                  callInfo
	intervalMS             int64
	skewMS                 int64
	kvRev                  uint64     // its mcp_fleet record's revision: writes are compare-and-swap on it
	rare                   *agentRare // nil: all its fields zero (agentrare.go)
	pos                    int32      // index in its shard's list
	state, live, persisted State
	zombie, quarantined    bool
	duplicate, skewed      bool
	goodbye                bool
	established            bool // heard over EstablishedAfter intervals: counts for mass silence
	qzombie                bool // queue zombie: backlog with no ack progress while it heartbeats
	dirty                  uint8
}

// shard is one lock's worth of the fleet: a map for lookups and a dense
// list for sweeps (iterating a slice of pointers is several times faster
// than iterating a map).
type shard struct {
	mu      sync.Mutex
	m       map[string]*agent
	list    []*agent
	configs map[uint64]sharedConfigs // configs objects its agents share, by hash (configs.go)
	_       [16]byte                 // keep shards on separate cache lines
}

// add inserts a (replacing an agent of the same id); the lock is held.
func (sh *shard) add(a *agent) {
	if old := sh.m[a.id]; old != nil {
		sh.remove(old)
	}
	a.pos = int32(len(sh.list))
	sh.m[a.id] = a
	sh.list = append(sh.list, a)
}

// remove deletes a; the lock is held.
func (sh *shard) remove(a *agent) {
	last := sh.list[len(sh.list)-1]
	sh.list[a.pos], last.pos = last, a.pos
	sh.list[len(sh.list)-1] = nil
	sh.list = sh.list[:len(sh.list)-1]
	delete(sh.m, a.id)
}

// tracker holds the fleet picture. Every replica runs one; only the
// dispatcher decides whether anything is sent or written.
type tracker struct {
	cfg      Config
	hbPrefix string
	clock    Clock
	base     time.Time
	log      zerolog.Logger
	warn     zerolog.Logger // sampled by sampler, for per-heartbeat problems
	sampler  *logsample.Sampler
	// change is sampled by changeSampler: agent state changes, joins and
	// restarts, one line each unless a whole fleet moves at once.
	change        zerolog.Logger
	changeSampler *logsample.Sampler
	metrics       *Metrics
	cmd           *dispatcher
	index         atomic.Pointer[kvconfig.Index]
	seed          maphash.Seed
	shards        [numShards]shard
	counts        [numStates]atomic.Int64
	grace         atomic.Int64 // silence never counts from before this
	linkDown      atomic.Bool
	blind         atomic.Bool // the heartbeat subscription is not proven to receive
	gap           atomic.Bool // a push was dropped while not commanding: reconcile once commanding
	behind        atomic.Bool // heartbeat backlog: silence is not the agents' fault
	mass          atomic.Bool
	// unbounded skips the heartbeat bounds: BenchmarkHeartbeatDecode's
	// reference for what the bounds cost; never set outside tests.
	unbounded bool
	silent    atomic.Int64  // silent agents at the last sweep
	size      atomic.Int64  // agents tracked; changed under a shard lock
	full      atomic.Bool   // size reached MaxAgents at the last refusal
	idsGen    atomic.Uint64 // bumped when an agent joins or is forgotten: the sorted id list is stale

	sortMu    sync.Mutex
	sorted    []string
	sortedGen uint64

	recMu sync.Mutex
	recq  []string // agents with a queued recovery command, FIFO
	sweep sweepState
	// servers is MCP server health at the last sweep (serverhealth.go);
	// anyServers: some agent reported servers (until then sweeps skip them).
	servers    atomic.Pointer[[]ServerHealth]
	anyServers atomic.Bool
}

func newTracker(cfg Config, prefix string, cmd *dispatcher, log zerolog.Logger, m *Metrics) *tracker {
	cfg = cfg.withDerived()
	t := &tracker{cfg: cfg, clock: cfg.Clock, log: log, metrics: m, cmd: cmd, seed: maphash.MakeSeed()}
	if t.clock == nil {
		t.clock = realClock{}
	}
	t.hbPrefix = strings.TrimSuffix(agentproto.Subjects{Prefix: prefix}.Wildcard("hb"), ">")
	t.base = t.clock.Now()
	t.sampler = logsample.New("heartbeats", 20, time.Second)
	t.warn = t.sampler.Logger(log)
	t.changeSampler = logsample.New("agent state changes", 200, time.Second)
	t.change = t.changeSampler.Logger(log)
	for i := range t.shards {
		t.shards[i].m = map[string]*agent{}
	}
	t.sweep.init(cfg, t.now())
	t.initServerLog(log)
	return t
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// now is monotonic ns since the tracker started.
func (t *tracker) now() int64 { return int64(t.clock.Now().Sub(t.base)) }

// times reads the clock once: monotonic ns since start, and the wall time.
func (t *tracker) times() (int64, time.Time) {
	wall := t.clock.Now()
	return int64(wall.Sub(t.base)), wall
}

func (t *tracker) shard(id string) *shard {
	return &t.shards[maphash.String(t.seed, id)%numShards]
}

// setState moves an agent to st, keeping counts and the dirty bit.
func (t *tracker) setState(a *agent, st State, now int64) (from State, changed bool) {
	from = a.state
	if from == st {
		return from, false
	}
	if from != StateUnknown {
		t.counts[from].Add(-1)
	}
	t.counts[st].Add(1)
	a.state, a.since = st, now
	a.dirty |= dirtyState
	if st == StateHealthy {
		a.setReason("")
	}
	return from, true
}

// ingestOut is what a heartbeat changed, acted on after the lock is released.
type ingestOut struct {
	discard           string
	from, to          State
	changed           bool
	reply             *agentproto.Command
	replyResend       bool
	restarted, dup    bool
	skewFlag          bool
	quarantined, recq bool
	created           bool
	acked             int
}

// handleHeartbeat is the hot path: one decode, one map lookup under a shard
// lock, no I/O except an optional reply to a zombie.
func (t *tracker) handleHeartbeat(msg *nats.Msg) {
	t.metrics.heartbeat()
	id, ok := strings.CutPrefix(msg.Subject, t.hbPrefix)
	if !ok || !kvconfig.ValidID(id) {
		t.discard(DiscardSubject, id, nil)
		return
	}
	if len(msg.Data) > MaxHeartbeatBytes {
		t.discard(DiscardTooLarge, id, fmt.Errorf("heartbeat is %d bytes, over %d", len(msg.Data), MaxHeartbeatBytes))
		return
	}
	var hb hbIn
	if err := decodeHeartbeat(msg.Data, &hb); err != nil {
		t.discard(DiscardJSON, id, err)
		return
	}
	if err := t.checkBounds(&hb); err != nil {
		t.discard(DiscardOutOfBounds, id, err)
		return
	}
	if hb.Agent != "" && hb.Agent != id {
		t.metrics.spoofed("hb")
		t.spoofedBy(id, hb.Agent)
		return
	}
	if hb.Instance == "" {
		t.discard(DiscardInstance, id, nil)
		return
	}
	hb.configsHash = maphash.Bytes(t.seed, hb.Configs)
	now, wall := t.times()
	sh := t.shard(id)
	sh.mu.Lock()
	a := sh.m[id]
	// configs are decoded (and bounded) only when they changed: most
	// heartbeats repeat the last ones byte for byte.
	if hb.configsChanged = a == nil || a.configsHash != hb.configsHash; hb.configsChanged {
		var err error
		if hb.applied, err = sh.appliedFor(hb.Configs, hb.configsHash); err != nil {
			sh.mu.Unlock()
			t.discard(DiscardOutOfBounds, id, err)
			return
		}
	}
	var out ingestOut
	if a == nil {
		if reason := t.admit(id); reason != "" {
			sh.mu.Unlock()
			t.refuse(reason, id)
			return
		}
		a = &agent{id: strings.Clone(id), joined: now}
		sh.add(a)
		t.size.Add(1)
		out.created = true
	}
	// Commands go back only to the agent's own heartbeat inbox: a reply
	// subject naming anything else could aim them at another agent.
	t.ingest(a, &hb, now, wall, agentproto.IsHeartbeatReply(id, msg.Reply), &out)
	sh.mu.Unlock()
	t.afterIngest(id, &hb, msg.Reply, &out)
}

// admit decides whether a new id is tracked: "" to track it, else the
// discard reason. The caller holds the id's shard lock; heartbeats arrive
// on one subscription, so size cannot pass MaxAgents.
func (t *tracker) admit(id string) string {
	if t.size.Load() >= int64(t.cfg.MaxAgents) {
		return DiscardFull
	}
	if t.cfg.Admit != nil && !t.cfg.Admit(id) {
		return DiscardUnregistered
	}
	return ""
}

// refuse counts and (sampled) logs a heartbeat from a new id that is not
// tracked; reaching MaxAgents is logged once, at error, with what to do.
func (t *tracker) refuse(reason, id string) {
	if reason == DiscardFull && !t.full.Swap(true) {
		t.metrics.fleetFull(true)
		t.log.Error().Int("max_agents", t.cfg.MaxAgents).Str("agent", kvconfig.Truncate(id, 80)).
			Msg("fleet full: heartbeats from new agent ids are discarded until gone agents are forgotten; raise --max-agents (TETHER_MAX_AGENTS) or forget gone agents with 'tetherctl agent forget ID'")
	}
	var err error
	if reason == DiscardUnregistered {
		err = errors.New("agent id is not registered in mcp_agents: register it with 'tetherctl agent add ID --role ROLE'")
	}
	t.discard(reason, id, err)
}

// checkBounds applies the heartbeat bounds (bounds.go); unbounded is set
// only by a benchmark that measures what they cost.
func (t *tracker) checkBounds(hb *hbIn) error {
	if t.unbounded {
		return nil
	}
	return checkBounds(hb, minIntervalMS(t.cfg.HeartbeatInterval))
}

func (t *tracker) discard(reason, id string, err error) {
	t.metrics.discarded(reason)
	ev := t.warn.Warn().Str("agent", kvconfig.Truncate(id, 80)).Str("reason", reason)
	if err != nil { // decode errors quote what the agent sent
		ev = ev.Str("error", kvconfig.Truncate(err.Error(), 200))
	}
	ev.Msg("heartbeat discarded")
}

// spoofedBy counts a heartbeat whose body named another agent on the
// subject owner's record (the subject is the identity permissions enforce).
func (t *tracker) spoofedBy(id, claimed string) {
	t.metrics.discarded(DiscardSpoofed)
	sh := t.shard(id)
	sh.mu.Lock()
	if a := sh.m[id]; a != nil {
		a.more().spoofed++
		a.dirty |= dirtyOther
	}
	sh.mu.Unlock()
	t.warn.Warn().Str("agent", id).Str("claimed", kvconfig.Truncate(claimed, 80)).Msg("heartbeat rejected: body agent disagrees with subject")
}

package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
)

// Command delivery routes, as tether_commands_sent_total labels them.
const (
	RouteSubject = "subject" // mcp.v1.cmd.<agent>
	RouteReply   = "reply"   // the reply subject of the agent's heartbeat
)

// writeTimeout bounds one batch of mcp_fleet writes.
const writeTimeout = 5 * time.Second

// errWritesAborted fails mcp_fleet writes once the fleet is closing.
var errWritesAborted = errors.New("fleet: closing: write abandoned")

// dispatcher is the one component that sends probes and commands to agents
// and writes mcp_fleet. Every method checks IsLeader first, so when several
// supervisor replicas run, a lease can make exactly one of them act while
// all of them track heartbeats. Command ids and probe nonces start with an
// epoch drawn at each start, so a restarted supervisor never reuses an id
// an agent may already have handled.
type dispatcher struct {
	nc          *nats.Conn
	js          jetstream.JetStream // its own instance: async publishes are awaited per batch
	kv          jetstream.KeyValue  // mcp_fleet
	kvPrefix    string
	subj        agentproto.Subjects
	isLeader    func() bool
	fence       func() (int64, uint64)
	log         zerolog.Logger
	metrics     *Metrics
	epoch       string
	noncePrefix string
	seq         atomic.Uint64
	// batches and largest count write's batches and the largest one (the
	// bound flushChunk sets on what is encoded and in flight at once).
	batches, largest atomic.Int64

	// stop is cancelled by abort: writes in flight end at once and later
	// ones fail, so a closing fleet never waits out writeTimeout on a
	// dead link.
	stop  context.Context
	abort context.CancelFunc
}

func newDispatcher(nc *nats.Conn, kv jetstream.KeyValue, prefix string, isLeader func() bool, log zerolog.Logger, m *Metrics) (*dispatcher, error) {
	c := &dispatcher{nc: nc, kv: kv, subj: agentproto.Subjects{Prefix: prefix}, isLeader: isLeader, log: log, metrics: m}
	c.stop, c.abort = context.WithCancel(context.Background())
	c.epoch = strconv.FormatUint(rand.Uint64()>>16, 36)
	c.noncePrefix = c.epoch + "-p"
	if nc != nil {
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
		if err != nil {
			return nil, err
		}
		c.js = js
	}
	if kv != nil {
		c.kvPrefix = "$KV." + kv.Bucket() + "."
	}
	return c, nil
}

// Leader reports whether this supervisor may send and write.
func (c *dispatcher) Leader() bool { return c.isLeader == nil || c.isLeader() }

// newID returns a fresh command id.
func (c *dispatcher) newID() string {
	return c.epoch + "-" + strconv.FormatUint(c.seq.Add(1), 36)
}

// newNonce returns a fresh probe nonce and its sequence; later probes have
// larger sequences, so an ack naming one answers every earlier one.
func (c *dispatcher) newNonce() (string, uint64) {
	n := c.seq.Add(1)
	return c.noncePrefix + strconv.FormatUint(n, 36), n
}

// parseNonce returns the sequence of one of this epoch's nonces.
func (c *dispatcher) parseNonce(s string) (uint64, bool) {
	rest, ok := strings.CutPrefix(s, c.noncePrefix)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 36, 64)
	return n, err == nil
}

// probe sends a probe on the agent's command subject (the only route: a
// zombie must not be able to answer it).
func (c *dispatcher) probe(agent, nonce string) {
	if !c.Leader() {
		return
	}
	b := make([]byte, 0, 64+2*len(nonce))
	b = append(b, `{"id":"`...)
	b = append(b, nonce...)
	b = append(b, `","type":"probe","nonce":"`...)
	b = append(b, nonce...)
	b = append(b, `"}`...)
	if err := c.nc.Publish(c.subj.Command(agent), b); err != nil {
		c.log.Warn().Err(err).Str("agent", agent).Msg("probe not sent")
		return
	}
	c.metrics.probeSent()
}

// send publishes a command on the agent's command subject.
func (c *dispatcher) send(agent string, cmd *agentproto.Command, resend bool) {
	c.deliver(agent, c.subj.Command(agent), RouteSubject, cmd, resend)
}

// reply sends a command as the reply to the agent's heartbeat, the route
// that does not need its (broken) command subscription.
func (c *dispatcher) reply(agent, subject string, cmd *agentproto.Command, resend bool) {
	c.deliver(agent, subject, RouteReply, cmd, resend)
}

func (c *dispatcher) deliver(agent, subject, route string, cmd *agentproto.Command, resend bool) {
	if !c.Leader() {
		return
	}
	if c.fence != nil {
		cmd.Term, cmd.Epoch = c.fence()
	}
	data, err := json.Marshal(cmd)
	if err == nil {
		err = c.nc.Publish(subject, data)
	}
	if err != nil {
		c.log.Warn().Err(err).Str("agent", agent).Str("id", cmd.ID).Str("type", cmd.Type).Msg("command not sent; stays pending")
		return
	}
	c.metrics.commandSent(cmd.Type, route, resend)
	ev := c.log.Debug()
	if !resend && cmd.Type != agentproto.CmdReresolve {
		ev = c.log.Info()
	}
	ev.Str("agent", agent).Str("id", cmd.ID).Str("type", cmd.Type).Str("route", route).Bool("resend", resend).
		Strs("servers", cmd.Servers).Str("not_before", cmd.NotBefore).Str("reason", cmd.Reason).Msg("command sent")
}

// fleetWrite is one mcp_fleet record to write, compare-and-swap on rev
// (the record's revision this leader last read or wrote; 0: none).
type fleetWrite struct {
	agent string
	data  []byte
	rev   uint64
}

// writeResult is what became of one write: err nil and rev the new
// revision; or errConflict with current, the revision someone else wrote.
type writeResult struct {
	agent   string
	rev     uint64
	current uint64
	err     error
}

// errConflict: the record's revision was not the one this leader expected.
var errConflict = errors.New("fleet: mcp_fleet record written by someone else")

// jsWrongLastSequence is JetStream's error code for a failed
// expected-last-subject-sequence check.
const jsWrongLastSequence = 10071

// write puts records into mcp_fleet with asynchronous publishes awaited as
// a batch, for at most writeTimeout or until abort. Each is
// compare-and-swap on the revision the leader knows, so a deposed leader's
// late writes cannot overwrite the new leader's (and a record written
// meanwhile by one is detected and written over). It returns every
// write's result.
func (c *dispatcher) write(recs []fleetWrite) []writeResult {
	if !c.Leader() || len(recs) == 0 || c.js == nil {
		return nil
	}
	c.batches.Add(1)
	if n := int64(len(recs)); n > c.largest.Load() {
		c.largest.Store(n) // one flush at a time: no lost update
	}
	results := make([]writeResult, 0, len(recs))
	failed := 0
	if c.stop.Err() != nil {
		for _, r := range recs {
			results = append(results, writeResult{agent: r.agent, err: errWritesAborted})
		}
		c.log.Warn().Err(errWritesAborted).Int("failed", len(recs)).Msg("mcp_fleet writes not sent")
		return results
	}
	futures := make([]jetstream.PubAckFuture, 0, len(recs))
	sent := make([]string, 0, len(recs))
	for _, r := range recs {
		f, err := c.js.PublishAsync(c.kvPrefix+r.agent, r.data, jetstream.WithExpectLastSequencePerSubject(r.rev))
		if err != nil {
			results = append(results, writeResult{agent: r.agent, err: err})
			failed++
			continue
		}
		futures, sent = append(futures, f), append(sent, r.agent)
	}
	timeout := time.NewTimer(writeTimeout)
	defer timeout.Stop()
	unacked := errors.New("no ack within " + writeTimeout.String())
	select {
	case <-c.js.PublishAsyncComplete():
	case <-timeout.C:
	case <-c.stop.Done():
		unacked = errWritesAborted
	}
	var lastErr error
	var conflicts []string
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			results = append(results, writeResult{agent: sent[i], rev: ack.Sequence})
			continue
		case err := <-f.Err():
			lastErr = err
		default:
			lastErr = unacked
		}
		var apiErr *jetstream.APIError
		if errors.As(lastErr, &apiErr) && apiErr.ErrorCode == jsWrongLastSequence {
			conflicts = append(conflicts, sent[i])
			continue
		}
		results = append(results, writeResult{agent: sent[i], err: lastErr})
		failed++
	}
	for _, agent := range conflicts {
		results = append(results, writeResult{agent: agent, current: c.currentRev(agent), err: errConflict})
	}
	c.metrics.fleetWrites(len(recs)-failed-len(conflicts), failed, len(conflicts))
	if failed > 0 {
		c.log.Warn().Err(lastErr).Int("failed", failed).Int("written", len(recs)-failed-len(conflicts)).
			Msg("mcp_fleet writes failed; retrying next round")
	}
	if len(conflicts) > 0 {
		c.log.Warn().Int("conflicts", len(conflicts)).Strs("agents", conflicts[:min(len(conflicts), 5)]).
			Msg("mcp_fleet records written by someone else since this leader read them (a deposed leader's late writes?): this leader's picture is written over them next round")
	}
	return results
}

// currentRev is the revision of an agent's mcp_fleet record now (0 when
// it has none, or it cannot be read).
func (c *dispatcher) currentRev(agent string) uint64 {
	ctx, cancel := context.WithTimeout(c.stop, writeTimeout)
	defer cancel()
	st, err := c.js.Stream(ctx, "KV_"+c.kv.Bucket())
	if err != nil {
		return 0
	}
	m, err := st.GetLastMsgForSubject(ctx, c.kvPrefix+agent)
	if err != nil {
		return 0
	}
	return m.Sequence
}

// forget deletes a long-gone agent's mcp_fleet record (bounded by
// writeTimeout and abort).
func (c *dispatcher) forget(agent string, rev uint64) {
	if !c.Leader() || c.kv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(c.stop, writeTimeout)
	defer cancel()
	// A purge keeps one small marker per forgotten id, not its record;
	// compare-and-swap like every write.
	var opts []jetstream.KVDeleteOpt
	if rev != 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	if err := c.kv.Purge(ctx, agent, opts...); err != nil {
		c.log.Warn().Err(err).Str("agent", agent).Msg("cannot delete mcp_fleet record")
	}
}

package agentproto

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Where a command arrived.
const (
	viaCommand = "cmd"      // mcp.v1.cmd.<agent>
	viaReply   = "hb_reply" // a reply to a heartbeat, _INBOX_<agent>.hb
)

// registerSystemSubs registers the client's own subscriptions, each probed
// through itself: the command subject, heartbeat replies, and the private
// health subject.
func (c *Client) registerSystemSubs() error {
	agent := c.cfg.Agent
	add := func(subject string, h nats.MsgHandler) (*Subscription, error) {
		return c.subscribe(subject, "", h, []SubOption{WithProbe("")})
	}
	if _, err := add(c.cfg.Subjects.Command(agent), c.cmds.handler(viaCommand)); err != nil {
		return err
	}
	if _, err := add(HeartbeatReply(agent), c.cmds.handler(viaReply)); err != nil {
		return err
	}
	_, err := add(c.healthSubject(), func(*nats.Msg) {})
	return err
}

// commander receives supervisor commands: it acknowledges each id in the
// next heartbeat, ignores ids it already handled (remembering the last
// CommandMemory), records probe nonces, and runs reconnect and reresolve
// commands on one goroutine once their not_before has passed.
type commander struct {
	c *Client

	mu       sync.Mutex
	seen     map[string]struct{}
	ring     []string // seen ids, oldest first once full
	next     int
	acks     []string // ids to acknowledge in the next heartbeat
	probeAck string   // nonce of the latest probe
	// term and epoch: the highest leadership fence accepted (Command.Epoch).
	term    int64
	epoch   uint64
	pending []task // sorted by due
	wake    chan struct{}

	resolveFails int // the client's own resolves failed in a row; runner only
}

// task is a command waiting to run; internal ones have no id.
type task struct {
	cmd      Command
	due      time.Time
	internal bool
}

func newCommander(c *Client) *commander {
	return &commander{c: c, seen: map[string]struct{}{}, wake: make(chan struct{}, 1)}
}

func (k *commander) handler(via string) nats.MsgHandler {
	return func(m *nats.Msg) {
		if len(m.Data) == 0 && m.Header.Get("Status") != "" {
			// A status message, not a command: "503 no responders" answers
			// a heartbeat published while no supervisor listens.
			k.c.noSupervisor.Add(1)
			return
		}
		k.receive(m.Data, via)
	}
}

// receive handles one command body. It never panics on bad input.
func (k *commander) receive(data []byte, via string) {
	c := k.c
	var cmd Command
	if err := json.Unmarshal(data, &cmd); err != nil {
		c.stats.invalid.Add(1)
		c.log.Warn().Err(err).Str(logKeyVia, via).Int("bytes", len(data)).Msg("agentproto: message is not a command; ignored")
		return
	}
	log := c.log.With().Str(logKeyCmdID, cmd.ID).Str(logKeyCmdType, cmd.Type).Str(logKeyVia, via).Logger()
	k.mu.Lock()
	if _, dup := k.seen[cmd.ID]; dup && cmd.ID != "" {
		k.ack(cmd.ID)
		k.mu.Unlock()
		c.stats.duplicates.Add(1)
		log.Debug().Msg("agentproto: command already handled; acknowledged again and ignored")
		return
	}
	var note string
	switch cmd.Type {
	case CmdProbe:
		if via == viaReply {
			note = "probe arrived as a heartbeat reply; probes count only on the command subject: ignored"
		} else {
			k.probeAck = cmd.Nonce
		}
	case CmdReconnect, CmdReresolve:
		if cmd.FenceBelow(k.term, k.epoch) {
			note = "command from a deposed leader (term " + strconv.FormatInt(cmd.Term, 10) + " epoch " +
				strconv.FormatUint(cmd.Epoch, 10) + ", below the accepted " + strconv.FormatInt(k.term, 10) + "/" +
				strconv.FormatUint(k.epoch, 10) + "): acknowledged and ignored"
			c.stats.fenced.Add(1)
			break
		}
		if cmd.Epoch != 0 || cmd.Term != 0 {
			k.term, k.epoch = cmd.Term, cmd.Epoch
		}
		if len(k.pending) >= c.cfg.MaxPendingCommands {
			k.mu.Unlock()
			log.Error().Int("pending", c.cfg.MaxPendingCommands).Msg("agentproto: too many pending commands; not acknowledged, the supervisor will re-send")
			return
		}
		k.insert(task{cmd: cmd, due: k.due(cmd, log)})
	default:
		note = "unknown command type: acknowledged and ignored"
		c.stats.unknown.Add(1)
	}
	k.remember(cmd.ID)
	k.ack(cmd.ID)
	k.mu.Unlock()
	if cmd.ID == "" {
		log.Warn().Msg("agentproto: command without an id cannot be acknowledged")
	}
	if note != "" {
		log.Warn().Msg("agentproto: " + note)
		return
	}
	ev := log.Info()
	if cmd.Type == CmdProbe {
		ev = log.Debug() // one every interval: answered in the next heartbeat
	}
	ev.Str("reason", cmd.Reason).Str("nonce", cmd.Nonce).Strs("servers", cmd.Servers).
		Str("not_before", cmd.NotBefore).Msg("agentproto: command accepted")
	c.emit(Event{Kind: EventCommand, Reason: cmd.Type, Subject: cmd.ID})
}

// due is when cmd may run: its not_before, or now if absent or unreadable.
func (k *commander) due(cmd Command, log zerolog.Logger) time.Time {
	now := k.c.cfg.Now()
	nb := cmd.NotBeforeTime()
	if cmd.NotBefore != "" && nb.IsZero() {
		log.Warn().Msg("agentproto: unreadable not_before; running now")
	}
	return now.Add(commandDelay(nb, now))
}

// remember adds id to the bounded memory of handled ids; k.mu held.
func (k *commander) remember(id string) {
	if id == "" {
		return
	}
	size := k.c.cfg.CommandMemory
	if len(k.ring) < size {
		k.ring = append(k.ring, id)
	} else {
		delete(k.seen, k.ring[k.next])
		k.ring[k.next] = id
		k.next = (k.next + 1) % size
	}
	k.seen[id] = struct{}{}
}

// ack queues id for the next heartbeat, once; k.mu held.
func (k *commander) ack(id string) {
	if id != "" && !slices.Contains(k.acks, id) && len(k.acks) < k.c.cfg.CommandMemory {
		k.acks = append(k.acks, id)
	}
}

// insert queues t by due time and wakes the runner; k.mu held.
func (k *commander) insert(t task) {
	i := slices.IndexFunc(k.pending, func(p task) bool { return p.due.After(t.due) })
	if i < 0 {
		i = len(k.pending) // equal due times keep arrival order
	}
	k.pending = slices.Insert(k.pending, i, t)
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// enqueueInternal queues a command of the client's own (the first
// resolve, a re-resolve after a rebuild) unless one is already waiting.
func (k *commander) enqueueInternal(typ, reason string) {
	k.enqueueInternalAt(typ, reason, k.c.cfg.Now())
}

func (k *commander) enqueueInternalAt(typ, reason string, due time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, t := range k.pending {
		if t.internal && t.cmd.Type == typ {
			return
		}
	}
	k.insert(task{cmd: Command{Type: typ, Reason: reason}, due: due, internal: true})
}

// takeAcks returns the ids to acknowledge and forgets them; giveBack
// returns them when the heartbeat could not be sent.
func (k *commander) takeAcks() (acks []string, probe string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	acks, k.acks = k.acks, nil
	return acks, k.probeAck
}

func (k *commander) giveBack(acks []string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, id := range acks {
		k.ack(id)
	}
}

// run carries out due commands one at a time until the client closes.
func (k *commander) run() {
	c := k.c
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		k.mu.Lock()
		if len(k.pending) > 0 {
			t.Reset(max(k.pending[0].due.Sub(c.cfg.Now()), 0))
		}
		k.mu.Unlock()
		select {
		case <-c.ctx.Done():
			return
		case <-k.wake:
		case <-t.C:
		}
		for {
			tk, ok := k.popDue()
			if !ok {
				break
			}
			k.exec(tk)
		}
	}
}

func (k *commander) popDue() (task, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.pending) == 0 || k.pending[0].due.After(k.c.cfg.Now()) || k.c.ctx.Err() != nil {
		return task{}, false
	}
	t := k.pending[0]
	k.pending = k.pending[1:]
	return t, true
}

// exec carries out one command.
func (k *commander) exec(t task) {
	c := k.c
	switch t.cmd.Type {
	case CmdReconnect:
		_, gen := c.conn()
		c.restartConsumers(gen, "reconnect command "+t.cmd.ID+": "+t.cmd.Reason)
		c.requestRebuild(gen, "reconnect command "+t.cmd.ID+": "+t.cmd.Reason)
	case CmdReresolve:
		start := time.Now()
		err := c.resolver.Reresolve(c.ctx, t.cmd.Servers)
		ev := c.log.Info()
		var se *ServiceError
		switch {
		case errors.As(err, &se) && se.Code == CodeNotFound:
			// A config an operator deleted: the resolver said so once.
			ev = c.log.Info().Str("outcome", "config deleted")
		case err != nil:
			ev = c.log.Warn().Err(err)
		}
		ev.Str(logKeyCmdID, t.cmd.ID).Str("reason", t.cmd.Reason).Strs("servers", t.cmd.Servers).
			Int64(logKeyTookMS, time.Since(start).Milliseconds()).Msg("agentproto: re-resolved")
		if t.internal {
			k.retryResolve(err != nil || c.resolver.Degraded())
		}
	}
}

// retryResolve keeps the client's own resolve going with backoff while the
// supervisor cannot be reached (nothing held, or only stale configs), so
// an agent that started without its supervisor gets fresh configs once it
// is back.
func (k *commander) retryResolve(failed bool) {
	if !failed {
		k.resolveFails = 0
		return
	}
	if k.c.ctx.Err() != nil {
		return
	}
	k.resolveFails++
	d := ReconnectDelay(k.resolveFails, DefaultBaseDelay, DefaultMaxDelay, k.c.cfg.jitter(), rand.Float64())
	k.enqueueInternalAt(CmdReresolve, "supervisor unreachable; retrying", k.c.cfg.Now().Add(d))
}

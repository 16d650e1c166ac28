package agentproto

import (
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// heartbeater publishes the agent's heartbeats on <prefix>.v1.hb.<agent>
// with reply subject _INBOX_<agent>.hb.
type heartbeater struct {
	c    *Client
	seq  atomic.Uint64
	kick chan struct{}
	// servers is the per-MCP-server call health every heartbeat carries.
	servers ServerRegistry
}

func (h *heartbeater) init(c *Client) {
	h.c = c
	h.kick = make(chan struct{}, 1)
}

// kickNow asks for a heartbeat now (after a reconnect or a rebuild).
func (h *heartbeater) kickNow() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// loop sends a heartbeat at once, then every HeartbeatInterval and on each
// kick, while the connection is up. A skipped heartbeat keeps its acks
// for the next one.
func (h *heartbeater) loop() {
	c := h.c
	t := time.NewTicker(c.cfg.HeartbeatInterval)
	defer t.Stop()
	h.kickNow()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		case <-h.kick:
		}
		nc := c.Conn()
		if nc == nil || !nc.IsConnected() {
			continue
		}
		if err := h.publish(nc, false); err != nil {
			c.log.Warn().Err(err).Msg("agentproto: heartbeat not sent")
		}
	}
}

// build assembles the next heartbeat.
func (h *heartbeater) build(acks []string, probe string, goodbye bool) Heartbeat {
	c := h.c
	st := c.Stats()
	calls := c.calls.Snapshot()
	hb := Heartbeat{
		Agent:      c.cfg.Agent,
		Instance:   c.instance,
		Seq:        h.seq.Add(1),
		SentAt:     c.cfg.Now().UTC().Format(time.RFC3339Nano),
		IntervalMS: c.cfg.HeartbeatInterval.Milliseconds(),
		ProbeAck:   probe,
		Acks:       acks,
		Conn: ConnStatus{
			State:      string(c.connState()),
			Reconnects: st.Reconnects + st.Rebuilds,
			RTTMS:      float64(c.RTT().Microseconds()) / 1000,
		},
		Calls:   &calls,
		Goodbye: goodbye,
	}
	hb.Consumers = c.consumerStatuses()
	if applied := c.resolver.Applied(); len(applied) > 0 {
		hb.Configs = applied
	}
	hb.Servers = h.servers.Snapshot()
	return hb
}

// publish sends one heartbeat on nc; on failure its acks are kept for the
// next one.
func (h *heartbeater) publish(nc *nats.Conn, goodbye bool) error {
	c := h.c
	acks, probe := c.cmds.takeAcks()
	data, err := json.Marshal(h.build(acks, probe, goodbye))
	if err == nil {
		err = nc.PublishMsg(&nats.Msg{
			Subject: c.cfg.Subjects.Heartbeat(c.cfg.Agent),
			Reply:   HeartbeatReply(c.cfg.Agent),
			Data:    data,
		})
	}
	if err != nil {
		c.cmds.giveBack(acks)
		return fmt.Errorf("agentproto: heartbeat: %w", err)
	}
	c.stats.heartbeats.Add(1)
	return nil
}

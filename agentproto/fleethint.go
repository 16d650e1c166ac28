package agentproto

import (
	"strings"
	"time"
)

// The reconnect window from the fleet's size. Config.FleetSize is the
// operator's figure of agents per server; the supervisor's resolveall
// reply carries how many agents it tracks (fleet_size), which the client
// keeps. The window is sized for the larger of the configured figure and
// the hint shared over the servers the client knows (a cluster's agents
// are spread over its nodes), so a fleet that outgrew a FleetSize left at
// its default still puts a bounded connect rate on a restarted server:
// 10,000 agents with the default 1,000 would otherwise all come back
// within 400 ms, 25,000 connects per second. The window stays within
// [ReconnectWait, MaxReconnectWait] whatever a reply says.

// fleetSizeFor is the fleet size per server the window is sized for.
func fleetSizeFor(configured, hint, servers int) int {
	servers = max(servers, 1)
	return max(configured, (hint+servers-1)/servers)
}

// window is the client's reconnect window with servers known servers.
func (c *Client) window(servers int) time.Duration {
	cfg := &c.cfg
	n := fleetSizeFor(cfg.FleetSize, int(c.fleetHint.Load()), servers)
	return ReconnectWindow(n, cfg.ConnectRate, cfg.ReconnectWait, cfg.MaxReconnectWait)
}

// knownServers is how many servers the client knows: the current
// connection's pool (with those a cluster announced), else Config.URLs.
func (c *Client) knownServers() int {
	if nc, _ := c.conn(); nc != nil {
		if n := len(nc.Servers()); n > 0 {
			return n
		}
	}
	n := 0
	for _, u := range strings.Split(c.cfg.URLs, ",") {
		if strings.TrimSpace(u) != "" {
			n++
		}
	}
	return max(n, 1)
}

// ReconnectWindow is the reconnect window the client uses now: Config's
// (Config.ReconnectWindowOf) or, once the supervisor reported a larger
// fleet than Config.FleetSize per known server, the one for that fleet.
func (c *Client) ReconnectWindow() time.Duration { return c.window(c.knownServers()) }

// setFleetHint keeps the supervisor's fleet_size and logs when it changes
// the window.
func (c *Client) setFleetHint(n int) {
	if n <= 0 {
		return
	}
	servers := c.knownServers()
	before := c.window(servers)
	if c.fleetHint.Swap(int64(n)) == int64(n) {
		return
	}
	if after := c.window(servers); after != before {
		c.log.Info().Int("fleet_size", n).Int("servers", servers).Int64("window_ms", after.Milliseconds()).
			Int64("was_ms", before.Milliseconds()).Msg("agentproto: reconnect window sized by the supervisor's fleet_size")
	}
}

// Package fleet watches a fleet of agents for the supervisor: it decodes and
// ingests heartbeats, judges every agent (healthy, suspect, lost, zombie,
// quarantined, gone) on its own clock, probes command subjects, sends and
// re-sends acknowledged recovery commands staggered at a fleet-wide rate,
// pushes reresolve to exactly the agents a KV change affects, persists its
// picture in mcp_fleet and answers mcp.v1.fleet.status. It also aggregates
// the heartbeats' per-MCP-server call health across the fleet (servers.go,
// serverhealth.go): a server failing for most of its live users is down,
// and its agents are not judged or recovered for it; one agent failing a
// server others reach is flagged mcp_failing and re-resolved once.
//
// Entry points: New and Options (with Config, DefaultConfig, Validate),
// Fleet.Start, Close and Drain; ConfigChanged for KV changes, LinkDown and
// LinkUp for the supervisor's own connection, TakeLead when this replica
// becomes leader, HandleStatus for the micro endpoint; Agent, AgentIDs,
// Counts, Pending, Servers and Send for readers and operators. The judgement maths
// are small pure functions (judge.go) and every judgement runs on the
// injectable Config.Clock.
//
// The fleet owns the mcp_fleet bucket and the cmd and hb subjects. It must
// not touch mcp_configs or mcp_agents (it reads them only through the
// kvconfig index it is given), decide leadership (Config.IsLeader tells it),
// or serve HTTP.
package fleet

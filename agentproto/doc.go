// Package agentproto is Tether's wire protocol and the small client every
// agent links.
//
// The wire contract (wire.go, errors.go; PROTOCOL.md spells it out for the
// nats CLI): subjects under <prefix>.v1, heartbeat and command bodies, and
// the error replies of the supervisor.
//
// The retry layer (retry.go, classify.go): Retry and RetryValue wrap any
// call with exponential backoff and jitter after one shared classification
// table decides whether an error is transient or permanent.
//
// The resolve client (resolve.go): a Resolver asks the supervisor for the
// agent's MCP server configs and keeps the last known good ones.
//
// MCP tool calls are not here: agentproto/mcp wraps the official MCP SDK
// (sessions, transports) around Retry and this package's classification,
// so an agent that calls no MCP server does not link the SDK's session
// code. The fleet simulation behind cmd/fleetsim is internal/fleetsim.
//
// The Client (client.go and the watchdog, subs, heartbeat and commands
// files) is the seed article's "Pattern 2: Connection Watchdog" made
// NATS-native. Connect opens a connection with the agent's private inbox
// prefix and options tuned for recovery (reconnect attempts on the agent's
// slots, once per ReconnectWindow at its ReconnectPhase, unlimited by
// default: back within one window of the server's return, 400 ms by
// default, with a fleet's connects spread evenly over the window; a
// bounded reconnect buffer), pings the link itself (liveness.go: a
// black-holed link is found within BlackHoleBound(PingInterval,
// MaxPingsOut), 2.7 s by default, and a link a just-restarted server
// answers late is not dropped), and then:
//
//   - a health loop checks every HealthInterval, at no cost to the server,
//     for closed or long-reconnecting connections and refused or invalid
//     subscriptions, and proves the data path end to end every
//     ProbeInterval (two heartbeats) with one self-probe through the next
//     probed subscription in turn (a reconnect callback is not proof; a
//     subscription that had traffic since its turn is skipped); a lost
//     probe makes it probe every tick until it knows whether the
//     subscription or the connection failed;
//   - a watchdog rebuilds the connection from scratch, on the same slots, when
//     nats.go closes it for good, when HealthFailures rounds in a row fail,
//     when it has been reconnecting for RebuildAfter, or on a reconnect
//     command — and restores every subscription registered with Subscribe,
//     every KV watcher registered with WatchKV (from its last revision),
//     the command subscription and heartbeats, then re-resolves;
//   - a single dead subscription (refused or dropped by the server, auto-
//     unsubscribed, or with a wedged handler that swallows its probes) is
//     re-created on its own, and a KV watcher that dies or stalls is
//     re-created from its last revision (kvconfig.Watcher, the one KV-watcher
//     implementation, also behind the supervisor's index);
//   - heartbeats go out on <prefix>.v1.hb.<agent> with reply subject
//     _INBOX_<agent>.hb, carrying the probe nonce, command acks, the
//     connection state, the configs applied and the call counters;
//   - commands (probe, reconnect, reresolve) arriving on
//     <prefix>.v1.cmd.<agent> or as heartbeat replies are acknowledged in
//     the next heartbeat, de-duplicated by id, and run after not_before;
//   - task consumers (Consume; consume.go, consume_run.go, consume_pull.go)
//     bind to an existing JetStream durable pull consumer and bind again
//     after every reconnect and rebuild, ack from the handler's result (nak
//     with backoff, term on a permanent error), keep long handlers alive
//     with in-progress acks, bound the handlers running, and count for the
//     heartbeat's consumers, from which the supervisor finds queue zombies;
//     a pull that hears nothing binds again and, repeated, rebuilds the
//     connection.
//
// A Client ends with Drain (graceful: a goodbye heartbeat, then
// nats.Conn.Drain) or Close (immediate). Both wait for every goroutine the
// client started and every handler running, and are safe to call twice.
//
// Permissions an agent's NATS user needs, beyond the resolve subjects:
// publish <prefix>.v1.hb.<agent> and, for the self-probes, <prefix>.v1.cmd.<agent>
// and _INBOX_<agent>.> ; subscribe <prefix>.v1.cmd.<agent> and
// _INBOX_<agent>.> . A probe publish that is refused turns that probe off
// (logged) rather than failing the health check. A consumer needs publish
// on $JS.API.CONSUMER.INFO.<stream>.<durable>,
// $JS.API.CONSUMER.MSG.NEXT.<stream>.<durable> and $JS.ACK.<stream>.<durable>.>
// ('tetherctl agent add --consumer STREAM:DURABLE').
package agentproto

// Package dashboard is the supervisor's live fleet dashboard: the static
// pages in web/ (embedded), the JSON API under /api/, the server-sent event
// stream /events, and the recorder that samples the fleet to diff states
// into events and keep latency history. The recorder also turns the
// agents' cumulative failure counters into their rise over a recent window
// (rates.go), so a row is red only while failures are recent; a connection
// is shown as last reported, with its age, and as history once the agent is
// no longer live. The agent page is served with the agent's detail in it
// (page.go), so it paints before any fetch. Above its table the fleet page
// shows notices of what resolution does quietly — invalid KV entries and
// roles no config names (notices.go) — and a banner of the MCP servers down
// across the fleet (a Source that is also a ServerSource), and the agent
// page explain's warnings.
//
// Entry points: New (with Config, ConfigFor and a Source such as FromFleet),
// Dashboard.Routes to mount it on a mux, Start, StopStreams and Close. It
// only reads the fleet through Source and the config index; it never
// changes either, and it owns no NATS subject or bucket.
package dashboard

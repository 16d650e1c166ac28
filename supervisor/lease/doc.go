// Package lease elects one leader among supervisor replicas with a
// JetStream KV key whose bucket's max age is the lease TTL: Start campaigns
// and renews by compare-and-swap, IsLeader answers on the hot path, Close
// releases. It owns the lease bucket (mcp_leader) and nothing else: what a
// leader does is the caller's business (the supervisor lets its fleet
// command only while IsLeader holds).
package lease

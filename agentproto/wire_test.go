package agentproto

import "testing"

func TestIsHeartbeatReply(t *testing.T) {
	for _, tc := range []struct {
		agent, subject string
		want           bool
	}{
		{"a7", "_INBOX_a7.hb", true},
		{"a7", HeartbeatReply("a7"), true},
		{"a7", "_INBOX_a7x.hb", false},
		{"a7", "_INBOX_a.hb", false},
		{"a7", "mcp.v1.cmd.b1", false},
		{"a7", "_INBOX_a7.hbx", false},
		{"a7", "", false},
		{"a7", "_INBOX.a7.hb", false},
	} {
		if got := IsHeartbeatReply(tc.agent, tc.subject); got != tc.want {
			t.Errorf("IsHeartbeatReply(%q, %q) = %v", tc.agent, tc.subject, got)
		}
	}
}

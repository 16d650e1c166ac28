package agentproto

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig("a7")
	if err := ok.Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	if err := (Config{Agent: "a7"}).Validate(); err != nil {
		t.Fatalf("zero fields take defaults: %v", err)
	}
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"empty agent", func(c *Config) { c.Agent = "" }, "Agent"},
		{"agent with dot", func(c *Config) { c.Agent = "a.b" }, "Agent"},
		{"prefix", func(c *Config) { c.Subjects.Prefix = "mcp.x" }, "Subjects.Prefix"},
		{"two credentials", func(c *Config) { c.Token, c.User = "t", "u" }, "credentials"},
		{"max below base", func(c *Config) { c.ReconnectWait, c.MaxReconnectWait = time.Second, time.Millisecond }, "MaxReconnectWait"},
		{"probe over interval", func(c *Config) { c.HealthInterval, c.ProbeTimeout = time.Second, 2*time.Second }, "ProbeTimeout"},
		{"rebuild before a round", func(c *Config) { c.RebuildAfter = time.Millisecond }, "RebuildAfter"},
		{"jitter", func(c *Config) { c.ReconnectJitter = 1.5 }, "ReconnectJitter"},
		{"negative ping", func(c *Config) { c.PingInterval = -time.Second }, "PingInterval"},
		{"negative failures", func(c *Config) { c.HealthFailures = -1 }, "HealthFailures"},
		{"bad policy", func(c *Config) { c.ResolvePolicy.Jitter = 2 }, "ResolvePolicy"},
	} {
		c := DefaultConfig("a7")
		tc.edit(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidConfig naming %s", tc.name, err, tc.field)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{Agent: "a7", HealthInterval: 100 * time.Millisecond}.withDefaults()
	if c.ProbeTimeout != 100*time.Millisecond {
		t.Errorf("ProbeTimeout = %v, want the shorter HealthInterval", c.ProbeTimeout)
	}
	if c.MaxReconnects != -1 || c.Name != "tether-agent-a7" || c.ReconnectJitter != DefaultReconnectJitter {
		t.Errorf("defaults not applied: %+v", c)
	}
	if (&Config{ReconnectJitter: -1}).jitter() != 0 {
		t.Error("negative jitter should mean none")
	}
}

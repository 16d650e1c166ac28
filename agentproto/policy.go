package agentproto

import "github.com/tether-dev/tether/kvconfig"

// PolicyFor maps a server config's retry block and timeout to a Policy,
// starting from base: a field the config leaves out keeps base's value,
// the config's timeout is the per-attempt timeout.
func PolicyFor(cfg *kvconfig.ServerConfig, base Policy) (Policy, error) {
	p := base
	if r := cfg.Retry; r != nil {
		if r.MaxAttempts != 0 {
			p.MaxAttempts = r.MaxAttempts
		}
		if r.BaseDelay != 0 {
			p.BaseDelay = r.BaseDelay.D()
		}
		if r.MaxDelay != 0 {
			p.MaxDelay = r.MaxDelay.D()
		}
		if r.Jitter != nil {
			p.Jitter = *r.Jitter
		}
	}
	if cfg.Timeout != 0 {
		p.AttemptTimeout = cfg.Timeout.D()
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

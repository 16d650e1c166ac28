package agentproto

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tether-dev/tether/kvconfig"
)

// cacheEntry is one server's last known good config on disk.
type cacheEntry struct {
	Role     string          `json:"role,omitempty"`
	Scope    string          `json:"scope"`
	Key      string          `json:"key"`
	Revision uint64          `json:"revision"`
	AsOf     kvconfig.AsOf   `json:"as_of"`
	Config   json.RawMessage `json:"config"`
}

// cacheFile is the on-disk form of the last known good configs.
type cacheFile struct {
	Agent   string                `json:"agent"`
	Servers map[string]cacheEntry `json:"servers"`
}

// loadCache reads the cache file, if any, into r.lkg as stale entries.
// A missing file is not an error; a file for another agent or a config
// that no longer validates is refused entry by entry, loudly.
func (r *Resolver) loadCache() error {
	if r.cfg.CacheFile == "" {
		return nil
	}
	data, err := os.ReadFile(r.cfg.CacheFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agentproto: read config cache: %w", err)
	}
	var f cacheFile
	if err := json.Unmarshal(data, &f); err != nil {
		return fmt.Errorf("agentproto: config cache %s is not valid JSON: %w; delete it to start afresh", r.cfg.CacheFile, err)
	}
	if f.Agent != r.cfg.Agent {
		return fmt.Errorf("agentproto: config cache %s belongs to agent %q, not %q", r.cfg.CacheFile, f.Agent, r.cfg.Agent)
	}
	cause := errors.New("agentproto: loaded from the config cache; not confirmed by the supervisor yet")
	for server, e := range f.Servers {
		cfg, err := kvconfig.DecodeConfig(e.Config)
		if err == nil && !kvconfig.ValidID(server) {
			err = fmt.Errorf("agentproto: config cache: server name %q is not a valid id", kvconfig.Truncate(server, 80))
		}
		if err == nil {
			err = CheckCommand(cfg, r.cfg.AllowCommands, server, e.Key, e.Revision)
		}
		if err != nil {
			r.log.Error().Err(err).Str("server", kvconfig.Truncate(server, 80)).Msg("config cache entry refused")
			continue
		}
		r.lkg[server] = &held{res: Resolved{Server: server, Role: e.Role, Scope: e.Scope, Key: e.Key, Revision: e.Revision,
			AsOf: e.AsOf, Config: cfg, Stale: true, Err: cause}, applied: true, fromCache: true}
	}
	r.log.Info().Str("file", r.cfg.CacheFile).Int("servers", len(r.lkg)).Msg("last known good configs loaded, stale until confirmed")
	return nil
}

// saveCacheLocked writes r.lkg to the cache file atomically, readable by
// the owner only (configs carry credentials). r.mu must be held.
func (r *Resolver) saveCacheLocked() {
	if r.cfg.CacheFile == "" {
		return
	}
	f := cacheFile{Agent: r.cfg.Agent, Servers: make(map[string]cacheEntry, len(r.lkg))}
	for s, h := range r.lkg {
		raw, err := json.Marshal(h.res.Config)
		if err != nil {
			continue
		}
		f.Servers[s] = cacheEntry{Role: h.res.Role, Scope: h.res.Scope, Key: h.res.Key, Revision: h.res.Revision, AsOf: h.res.AsOf, Config: raw}
	}
	data, _ := json.Marshal(f)
	tmp, err := os.CreateTemp(filepath.Dir(r.cfg.CacheFile), ".tether-cache-*")
	if err == nil {
		_, err = tmp.Write(data)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), r.cfg.CacheFile)
		}
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}
	if err != nil {
		r.log.Warn().Err(err).Str("file", r.cfg.CacheFile).Msg("cannot write the config cache")
	}
}

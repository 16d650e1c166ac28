package fleet

// Most agents of a fleet report the same configs at the same revisions,
// byte for byte: each shard keeps the decoded configs of the last few
// distinct configs objects it saw, and an agent reporting one of them
// holds the shared slice instead of its own copy (112 B for two configs).
// A record's configs are only ever replaced, never changed in place, so
// sharing them is safe.

// maxSharedConfigs bounds a shard's table; when it is full the table
// starts afresh (agents keep what they hold), so neither many distinct
// configs nor a hostile agent making up new ones grows it without bound.
// Objects over maxSharedConfigBytes (a few dozen servers) are not shared:
// the tables hold at most 64 × 16 small ones.
const (
	maxSharedConfigs     = 16
	maxSharedConfigBytes = 1024
)

// sharedConfigs is one configs object as sent and its decoded entries.
type sharedConfigs struct {
	raw     string
	applied []serverApplied
}

// appliedFor returns the decoded configs of raw (hash is its maphash with
// the tracker's seed): the shard's shared copy when one matches, else
// decodeApplied's, which is shared from then on. The lock is held.
func (sh *shard) appliedFor(raw []byte, hash uint64) ([]serverApplied, error) {
	if c, ok := sh.configs[hash]; ok && c.raw == string(raw) {
		return c.applied, nil
	}
	applied, err := decodeApplied(raw)
	if err != nil || len(applied) == 0 || len(raw) > maxSharedConfigBytes {
		return applied, err
	}
	if sh.configs == nil || len(sh.configs) >= maxSharedConfigs {
		sh.configs = make(map[uint64]sharedConfigs, maxSharedConfigs)
	}
	sh.configs[hash] = sharedConfigs{raw: string(raw), applied: applied}
	return applied, nil
}

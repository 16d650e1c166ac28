package tetherctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/kvconfig"
)

// entryView is a stored revision as printed (config masked unless
// --show-secrets).
type entryView struct {
	Key      string          `json:"key"`
	Scope    string          `json:"scope,omitempty"`
	Server   string          `json:"server,omitempty"`
	Revision uint64          `json:"revision"`
	Op       string          `json:"op"`
	Created  time.Time       `json:"created"`
	Valid    bool            `json:"valid"`
	Error    string          `json:"error,omitempty"`
	Config   json.RawMessage `json:"config,omitempty"`
}

func (a *app) view(k kvconfig.Key, e jetstream.KeyValueEntry) entryView {
	v := entryView{Key: e.Key(), Scope: k.Scope(), Server: k.Server, Revision: e.Revision(),
		Op: opName(e.Operation()), Created: e.Created()}
	if e.Operation() != jetstream.KeyValuePut {
		return v
	}
	v.Config = a.mask(e.Value())
	if _, err := kvconfig.DecodeConfig(e.Value()); err != nil {
		v.Error = describeConfigErr(err)
	} else {
		v.Valid = true
	}
	return v
}

func (a *app) printEntry(v entryView) {
	t := newTable(a.out, "key", v.Key)
	t.row("scope", v.Scope)
	t.row("revision", strconv.FormatUint(v.Revision, 10))
	t.row("written", a.when(v.Created))
	if v.Valid {
		t.row("valid", "yes")
	} else {
		t.row("valid", "NO: "+v.Error)
	}
	t.flush()
	fmt.Fprintf(a.out, "config:\n%s\n", indent(v.Config))
}

// getEntry reads the current value of key; absent or deleted is ErrNotFound.
func (a *app) getEntry(ctx context.Context, kv jetstream.KeyValue, k kvconfig.Key) (jetstream.KeyValueEntry, error) {
	octx, cancel := a.opCtx(ctx)
	defer cancel()
	e, err := kv.Get(octx, k.String())
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fail(ErrNotFound, err, "%s has no value (never written, or deleted); see 'tetherctl history %s %s', or write one with 'tetherctl put'",
			k, k.Scope(), k.Server)
	}
	if err != nil {
		return nil, a.natsFailure("read "+k.String(), err)
	}
	return e, nil
}

func (a *app) cmdGet(ctx context.Context, args []string) error {
	k, err := keyArg(args[0], args[1])
	if err != nil {
		return err
	}
	kv, err := a.configs(ctx)
	if err != nil {
		return err
	}
	e, err := a.getEntry(ctx, kv, k)
	if err != nil {
		return err
	}
	v := a.view(k, e)
	if a.g.json {
		return a.printJSON(v)
	}
	a.printEntry(v)
	return nil
}

func (a *app) cmdPut(ctx context.Context, args []string) error {
	k, err := keyArg(args[0], args[1])
	if err != nil {
		return err
	}
	data, err := a.readInput(args[2])
	if err != nil {
		return err
	}
	if _, err := kvconfig.DecodeConfig(data); err != nil {
		return configErr(displayName(args[2])+" for "+k.String(), k.String(), err,
			"; nothing was written. Fix it and check with 'tetherctl validate'")
	}
	kv, err := a.configs(ctx)
	if err != nil {
		return err
	}
	expected := a.f.revision.v
	if !a.f.revision.set {
		octx, cancel := a.opCtx(ctx)
		e, err := kv.Get(octx, k.String())
		cancel()
		switch {
		case err == nil:
			expected = e.Revision()
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return a.natsFailure("read "+k.String(), err)
		}
	}
	rev, err := a.casWrite(ctx, kv, k, compact(data), expected)
	if err != nil {
		return err
	}
	return a.reportWrite(ctx, kv, k, expected, rev, fmt.Sprintf("wrote %s revision %d", k, rev))
}

// casWrite writes value to k only if the key is still at revision expected
// (0: absent or deleted). A lost race is an ErrConflict naming the current
// revision.
func (a *app) casWrite(ctx context.Context, kv jetstream.KeyValue, k kvconfig.Key, value []byte, expected uint64) (uint64, error) {
	octx, cancel := a.opCtx(ctx)
	defer cancel()
	var rev uint64
	var err error
	if expected == 0 {
		rev, err = kv.Create(octx, k.String(), value)
	} else {
		rev, err = kv.Update(octx, k.String(), value, expected)
	}
	if isConflict(err) {
		return 0, a.conflict(ctx, kv, k, expected, err)
	}
	if err != nil {
		return 0, a.natsFailure("write "+k.String(), err)
	}
	return rev, nil
}

func (a *app) conflict(ctx context.Context, kv jetstream.KeyValue, k kvconfig.Key, expected uint64, cause error) error {
	want := "absent"
	if expected != 0 {
		want = "at revision " + strconv.FormatUint(expected, 10)
	}
	now, retry := "has changed", ""
	if hist, err := a.history(ctx, kv, k); err == nil {
		last := hist[len(hist)-1]
		now = fmt.Sprintf("is at revision %d (%s %s)", last.Revision(), opName(last.Operation()), ago(a.cli.Now().Sub(last.Created())))
		retry = fmt.Sprintf(" with --revision %d", last.Revision())
	}
	return fail(ErrConflict, cause, "conflict: %s %s, not %s as expected: it changed since your copy was read. Nothing was written. "+
		"Re-read it ('tetherctl get %s %s'), merge your change, and retry%s",
		k, now, want, k.Scope(), k.Server, retry)
}

// reportWrite reads the key back and prints what was written.
func (a *app) reportWrite(ctx context.Context, kv jetstream.KeyValue, k kvconfig.Key, prev, rev uint64, headline string) error {
	e, err := a.getEntry(ctx, kv, k)
	if err != nil {
		return fail(nil, err, "%s, but reading it back failed: %v", headline, err)
	}
	v := a.view(k, e)
	before := a.before(ctx, kv, k, rev)
	if a.g.json {
		out := struct {
			Written  uint64    `json:"written_revision"`
			Previous uint64    `json:"previous_revision"`
			Deleted  uint64    `json:"deleted_revision,omitempty"` // the delete or purge marker this write re-created the key after
			DelOp    string    `json:"deleted_op,omitempty"`       // DEL or PURGE
			ReadBack entryView `json:"read_back"`
		}{Written: rev, Previous: prev, ReadBack: v}
		if before != nil && before.Operation() != jetstream.KeyValuePut {
			out.Deleted, out.DelOp = before.Revision(), opName(before.Operation())
		}
		return a.printJSON(out)
	}
	fmt.Fprintf(a.out, "%s (%s)\n", headline, wasLine(prev, before))
	if e.Revision() != rev {
		fmt.Fprintf(a.out, "note: %s has changed again since: now revision %d\n", k, e.Revision())
	}
	fmt.Fprintln(a.out, "read back:")
	a.printEntry(v)
	return nil
}

// before returns the revision of k kept just before rev, nil when rev is
// its first (or the history cannot be read: the caller then says less).
func (a *app) before(ctx context.Context, kv jetstream.KeyValue, k kvconfig.Key, rev uint64) jetstream.KeyValueEntry {
	hist, err := a.history(ctx, kv, k)
	if err != nil {
		return nil
	}
	var prev jetstream.KeyValueEntry
	for _, e := range hist {
		if e.Revision() >= rev {
			break
		}
		prev = e
	}
	return prev
}

// wasLine says what a write replaced: nothing (a new key), a delete or
// purge marker (the key is re-created) or a value at revision prev.
func wasLine(prev uint64, before jetstream.KeyValueEntry) string {
	switch {
	case before != nil && before.Operation() == jetstream.KeyValueDelete:
		return fmt.Sprintf("re-created; revision %d was a delete", before.Revision())
	case before != nil && before.Operation() == jetstream.KeyValuePurge:
		return fmt.Sprintf("re-created; revision %d was a purge", before.Revision())
	case prev != 0:
		return "was revision " + strconv.FormatUint(prev, 10)
	case before != nil:
		return "was revision " + strconv.FormatUint(before.Revision(), 10)
	}
	return "new key"
}

// history returns every kept revision of k, oldest first.
func (a *app) history(ctx context.Context, kv jetstream.KeyValue, k kvconfig.Key) ([]jetstream.KeyValueEntry, error) {
	octx, cancel := a.opCtx(ctx)
	defer cancel()
	hist, err := kv.History(octx, k.String())
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fail(ErrNotFound, err, "%s has no history: it was never written (or was purged); check SCOPE and SERVER", k)
	}
	if err != nil {
		return nil, a.natsFailure("read history of "+k.String(), err)
	}
	return hist, nil
}

func (a *app) cmdHistory(ctx context.Context, args []string) error {
	k, err := keyArg(args[0], args[1])
	if err != nil {
		return err
	}
	kv, err := a.configs(ctx)
	if err != nil {
		return err
	}
	hist, err := a.history(ctx, kv, k)
	if err != nil {
		return err
	}
	views := make([]entryView, len(hist))
	for i, e := range hist {
		views[i] = a.view(k, e)
	}
	if a.g.json {
		return a.printJSON(views)
	}
	fmt.Fprintf(a.out, "%s: %d kept revision(s), oldest first\n", k, len(views))
	t := newTable(a.out, "REVISION", "OP", "WRITTEN", "VALID", "VALUE")
	for i, v := range views {
		rev := strconv.FormatUint(v.Revision, 10)
		if i == len(views)-1 {
			rev += " (current)"
		}
		valid := ""
		if v.Op == "PUT" {
			valid = "yes"
			if !v.Valid {
				valid = "NO: " + v.Error
			}
		}
		t.row(rev, v.Op, a.when(v.Created), valid, string(v.Config))
	}
	if t.fit(maxTableWidth, 3).flush() {
		fmt.Fprintln(a.out, "(an error ending in … is cut to fit the table; --json shows it in full)")
	}
	return nil
}

func (a *app) cmdRollback(ctx context.Context, args []string) error {
	k, err := keyArg(args[0], args[1])
	if err != nil {
		return err
	}
	target, err := strconv.ParseUint(args[2], 10, 64)
	if err != nil || target == 0 {
		return usageErr(lookup("rollback"), "REVISION %q: want a revision number from 'tetherctl history'", args[2])
	}
	kv, err := a.configs(ctx)
	if err != nil {
		return err
	}
	hist, err := a.history(ctx, kv, k)
	if err != nil {
		return err
	}
	old, err := pickRevision(k, hist, target)
	if err != nil {
		return err
	}
	last := hist[len(hist)-1]
	if last.Operation() == jetstream.KeyValuePut && bytes.Equal(last.Value(), old.Value()) {
		if a.g.json {
			return a.printJSON(map[string]any{"written_revision": 0, "current_revision": last.Revision(), "unchanged": true})
		}
		fmt.Fprintf(a.out, "%s: current revision %d already has the value of revision %d; nothing written\n", k, last.Revision(), target)
		return nil
	}
	rev, err := a.casWrite(ctx, kv, k, old.Value(), last.Revision())
	if err != nil {
		return err
	}
	return a.reportWrite(ctx, kv, k, last.Revision(), rev,
		fmt.Sprintf("rolled back %s to the value of revision %d: wrote revision %d", k, target, rev))
}

// pickRevision finds revision target in hist and checks it can be restored.
func pickRevision(k kvconfig.Key, hist []jetstream.KeyValueEntry, target uint64) (jetstream.KeyValueEntry, error) {
	kept := make([]string, 0, len(hist))
	for _, e := range hist {
		if e.Revision() != target {
			kept = append(kept, strconv.FormatUint(e.Revision(), 10)+" "+opName(e.Operation()))
			continue
		}
		if e.Operation() != jetstream.KeyValuePut {
			return nil, fail(ErrNotFound, nil, "revision %d of %s is a %s: there is no value to restore; pick a PUT revision from 'tetherctl history %s %s'",
				target, k, opName(e.Operation()), k.Scope(), k.Server)
		}
		if _, err := kvconfig.DecodeConfig(e.Value()); err != nil {
			return nil, fail(ErrInvalidConfig, err, "revision %d of %s is itself invalid (%s); restoring it would break resolution, so nothing was written",
				target, k, describeConfigErr(err))
		}
		return e, nil
	}
	return nil, fail(ErrNotFound, nil, "revision %d of %s is not in its kept history (kept: %s); pick one from 'tetherctl history %s %s'",
		target, k, strings.Join(kept, ", "), k.Scope(), k.Server)
}

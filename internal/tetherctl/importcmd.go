package tetherctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/kvconfig"
)

// Statuses of an imported server.
const (
	statusNew       = "new"
	statusChanged   = "changed"
	statusUnchanged = "unchanged"
	statusSkipped   = "skipped"
	statusConflict  = "conflict"
)

// change is one field of a diff. Old and New are JSON values, masked.
type change struct {
	Field string `json:"field"`
	Op    string `json:"op"` // added, removed, changed
	Old   string `json:"old,omitempty"`
	New   string `json:"new,omitempty"`
}

// importItem is the plan and outcome for one server of an import.
type importItem struct {
	Server   string   `json:"server"`
	Key      string   `json:"key"`
	Status   string   `json:"status"`
	Revision uint64   `json:"revision,omitempty"` // current revision when read
	Written  uint64   `json:"written_revision,omitempty"`
	Changes  []change `json:"changes,omitempty"`
	Notes    []string `json:"notes,omitempty"`
	Error    string   `json:"error,omitempty"`

	key   kvconfig.Key
	value []byte
}

type importReport struct {
	File    string       `json:"file"`
	Scope   string       `json:"scope"`
	DryRun  bool         `json:"dry_run"`
	Ignored []string     `json:"ignored_top_level_keys,omitempty"`
	Servers []importItem `json:"servers"`
}

func (a *app) cmdValidate(_ context.Context, args []string) error {
	type result struct {
		File     string          `json:"file"`
		Valid    bool            `json:"valid"`
		Kind     string          `json:"kind"` // config or mcpServers
		Servers  []string        `json:"servers,omitempty"`
		Error    string          `json:"error,omitempty"`
		Problems []problemView   `json:"problems,omitempty"` // of a config file: every one
		Config   json.RawMessage `json:"config,omitempty"`
	}
	var results []result
	var errs []error
	for _, name := range args {
		data, err := a.readInput(name)
		if err != nil {
			return err
		}
		r := result{File: displayName(name), Kind: "config"}
		if isServersFile(data) {
			r.Kind = fileKeyMCPServers
			f, perr := parseServersFile(data, false)
			for _, e := range f.Entries {
				r.Servers = append(r.Servers, e.Name)
			}
			if perr != nil {
				err = fail(ErrInvalidConfig, perr, "invalid mcpServers file %s:%s", r.File, indentErrs(perr))
			}
		} else if _, derr := kvconfig.DecodeConfig(data); derr != nil {
			err = configErr(r.File, r.File, derr, "")
			r.Problems = problemViews(derr)
		} else {
			r.Config = a.mask(data)
		}
		r.Valid = err == nil
		if err != nil {
			r.Error = err.Error()
			errs = append(errs, err)
		} else if !a.g.json {
			fmt.Fprintf(a.out, "%s: valid %s%s\n", r.File, r.Kind, serverList(r.Servers))
		}
		results = append(results, r)
	}
	if a.g.json {
		if err := a.printJSON(results); err != nil {
			return err
		}
	}
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return fail(ErrInvalidConfig, errors.Join(errs...), "%d of %d files are invalid:%s", len(errs), len(args), indentErrs(errors.Join(errs...)))
}

// problemView is one problem of a config value, as validate --json prints it.
type problemView struct {
	Field string `json:"field,omitempty"` // JSON path, e.g. "retry.max_attempts"; "" for the whole value
	Error string `json:"error"`
}

func problemViews(err error) []problemView {
	probs, more := configProblems(err)
	out := make([]problemView, 0, len(probs)+1)
	for _, p := range probs {
		out = append(out, problemView{Field: p.Field, Error: p.Err.Error()})
	}
	if more > 0 {
		out = append(out, problemView{Error: fmt.Sprintf("%d more problem(s) not listed", more)})
	}
	return out
}

func serverList(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return fmt.Sprintf(" file: %d server(s): %s", len(names), strings.Join(names, ", "))
}

// indentErrs puts each line of a joined error on its own indented line.
func indentErrs(err error) string {
	var b strings.Builder
	for _, line := range strings.Split(err.Error(), "\n") {
		b.WriteString("\n  " + strings.TrimPrefix(line, "tetherctl: "))
	}
	return b.String()
}

func (a *app) cmdImport(ctx context.Context, args []string) error {
	cmd := lookup("import")
	if a.f.scope == "" {
		return usageErr(cmd, "--scope is required: global, role:<role> or agent:<agent>")
	}
	kind, owner, err := kvconfig.ParseScope(a.f.scope)
	if err != nil {
		return usageErr(cmd, "--scope: %s", trimPkg(err))
	}
	data, err := a.readInput(args[0])
	if err != nil {
		return err
	}
	file := displayName(args[0])
	f, err := parseServersFile(data, a.f.dropUnsupported)
	if err != nil {
		return fail(ErrInvalidConfig, err, "cannot import %s, nothing was written:%s", file, indentErrs(err))
	}
	if len(f.Entries) == 0 {
		return fail(ErrInvalidConfig, nil, "%s has no servers in its mcpServers object; nothing to import", file)
	}
	kv, err := a.configs(ctx)
	if err != nil {
		return err
	}
	rep := importReport{File: file, DryRun: a.f.dryRun, Ignored: f.Ignored}
	for _, e := range f.Entries {
		it, err := a.planItem(ctx, kv, kind, owner, e)
		if err != nil {
			return err
		}
		rep.Scope = it.key.Scope()
		rep.Servers = append(rep.Servers, it)
	}
	var applyErr error
	if !a.f.dryRun {
		applyErr = a.applyImport(ctx, kv, rep.Servers)
	}
	if err := a.printImport(rep); err != nil {
		return err
	}
	return applyErr
}

// planItem reads the current value of the entry's key and diffs it.
func (a *app) planItem(ctx context.Context, kv jetstream.KeyValue, kind kvconfig.ScopeKind, owner string, e serverEntry) (importItem, error) {
	k, err := kvconfig.KeyFor(kind, owner, e.Name)
	if err != nil {
		return importItem{}, usageErr(nil, "%s", trimPkg(err))
	}
	it := importItem{Server: e.Name, Key: k.String(), Notes: e.Notes, key: k, value: e.Value}
	if e.Skipped != "" {
		it.Status = statusSkipped
		it.Notes = append(it.Notes, "not imported: "+e.Skipped)
		return it, nil
	}
	// The diff is of exactly what would be stored. Converted entries are
	// validated JSON objects, so an error here is a bug.
	newFlat, err := flatten(e.Value)
	if err != nil {
		return it, fail(nil, err, "server %q: %v", e.Name, err)
	}
	octx, cancel := a.opCtx(ctx)
	cur, err := kv.Get(octx, k.String())
	cancel()
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		it.Status, it.Changes = statusNew, a.diff(nil, newFlat)
		return it, nil
	}
	if err != nil {
		return it, a.natsFailure("read "+k.String(), err)
	}
	it.Revision = cur.Revision()
	if equivalent(cur.Value(), e.Value) {
		it.Status = statusUnchanged
		if !bytes.Equal(compact(cur.Value()), compact(e.Value)) {
			it.Notes = append(it.Notes, fmt.Sprintf("revision %d is spelt differently but is the same config (e.g. its transport is inferred); not written", it.Revision))
		}
		return it, nil
	}
	it.Status = statusChanged
	if _, err := kvconfig.DecodeConfig(cur.Value()); err != nil {
		it.Notes = append(it.Notes, fmt.Sprintf("current revision %d is invalid (%s); it will be replaced", it.Revision, describeConfigErr(err)))
	}
	oldFlat, err := flatten(cur.Value())
	if err != nil {
		it.Notes = append(it.Notes, fmt.Sprintf("current revision %d is not a JSON object; the diff lists every field as added", it.Revision))
	}
	it.Changes = a.diff(oldFlat, newFlat)
	return it, nil
}

// diff lists added, removed and changed fields, secrets masked.
func (a *app) diff(old, cur map[string]string) []change {
	show := func(field, v string) string {
		if a.g.showSecrets {
			return v
		}
		return kvconfig.MaskField(field, v)
	}
	var out []change
	for _, f := range sortedKeys(cur) {
		o, had := old[f]
		switch {
		case !had:
			out = append(out, change{Field: f, Op: "added", New: show(f, cur[f])})
		case o != cur[f]:
			out = append(out, change{Field: f, Op: "changed", Old: show(f, o), New: show(f, cur[f])})
		}
	}
	for _, f := range sortedKeys(old) {
		if _, ok := cur[f]; !ok {
			out = append(out, change{Field: f, Op: "removed", Old: show(f, old[f])})
		}
	}
	return out
}

// applyImport writes new and changed keys with compare-and-swap against the
// revision read for the diff. A conflict on one key does not stop the
// others; it makes the result ErrConflict.
func (a *app) applyImport(ctx context.Context, kv jetstream.KeyValue, items []importItem) error {
	var conflicts []string
	for i := range items {
		it := &items[i]
		if it.Status != statusNew && it.Status != statusChanged {
			continue
		}
		rev, err := a.casWrite(ctx, kv, it.key, it.value, it.Revision)
		if errors.Is(err, ErrConflict) {
			it.Status, it.Error = statusConflict, err.Error()
			conflicts = append(conflicts, it.Key)
			continue
		}
		if err != nil {
			it.Error = err.Error()
			return fail(kindOf(err), err, "import stopped at %s: %s; keys listed with a written revision were written", it.Key, strings.TrimPrefix(err.Error(), "tetherctl: "))
		}
		it.Written = rev
	}
	if len(conflicts) > 0 {
		return fail(ErrConflict, nil, "conflict: %s changed while importing and were not written (the others were); run the import again with --dry-run to see the difference",
			strings.Join(conflicts, ", "))
	}
	return nil
}

func (a *app) printImport(rep importReport) error {
	if a.g.json {
		return a.printJSON(rep)
	}
	mode := ""
	if rep.DryRun {
		mode = " (dry run: nothing written)"
	}
	fmt.Fprintf(a.out, "import %s into %s%s\n", rep.File, rep.Scope, mode)
	if len(rep.Ignored) > 0 {
		fmt.Fprintf(a.out, "note: ignored top-level key(s) %s\n", quoteList(rep.Ignored))
	}
	counts := map[string]int{}
	for _, it := range rep.Servers {
		counts[it.Status]++
		line := it.Key + "  " + it.Status
		if it.Revision != 0 {
			line += "  (revision " + strconv.FormatUint(it.Revision, 10) + ")"
		}
		if it.Written != 0 {
			line += "  -> wrote revision " + strconv.FormatUint(it.Written, 10)
		}
		fmt.Fprintln(a.out, line)
		for _, c := range it.Changes {
			switch c.Op {
			case "added":
				fmt.Fprintf(a.out, "    + %s: %s\n", c.Field, c.New)
			case "removed":
				fmt.Fprintf(a.out, "    - %s: %s\n", c.Field, c.Old)
			default:
				fmt.Fprintf(a.out, "    ~ %s: %s -> %s\n", c.Field, c.Old, c.New)
			}
		}
		for _, n := range it.Notes {
			fmt.Fprintf(a.out, "    note: %s\n", n)
		}
	}
	var parts []string
	for _, s := range []string{statusNew, statusChanged, statusUnchanged, statusSkipped, statusConflict} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	fmt.Fprintf(a.out, "%d server(s): %s\n", len(rep.Servers), strings.Join(parts, ", "))
	return nil
}

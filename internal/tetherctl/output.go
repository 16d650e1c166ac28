package tetherctl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tether-dev/tether/kvconfig"
)

// unreadableValue stands in for a stored value that is not JSON and so
// cannot be masked field by field.
const unreadableValue = `"<not JSON; hidden, --show-secrets shows it>"`

// mask returns raw with every secret replaced by "****" (kvconfig.MaskValue:
// env and header values, args, URL userinfo, query, fragment and key-like
// path segments), unless --show-secrets. It works on invalid configs too,
// as long as they are JSON objects; anything else is hidden whole.
func (a *app) mask(raw []byte) json.RawMessage {
	if a.g.showSecrets {
		if !json.Valid(raw) {
			b, _ := json.Marshal(string(raw))
			return b
		}
		return compact(raw)
	}
	return maskJSON(raw)
}

func maskJSON(raw []byte) json.RawMessage {
	if m := kvconfig.MaskValue(raw); string(m) != kvconfig.UnreadableValue {
		return m
	}
	return json.RawMessage(unreadableValue)
}

func compact(raw []byte) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return raw
	}
	return buf.Bytes()
}

func indent(raw []byte) string {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return string(raw)
	}
	return buf.String()
}

// printJSON writes v as indented JSON on stdout.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fail(nil, err, "write output: %v", err)
	}
	return nil
}

// table writes aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() { _ = t.tw.Flush() }

// opName spells a KV operation as the nats CLI does.
func opName(op jetstream.KeyValueOp) string {
	switch op {
	case jetstream.KeyValuePut:
		return "PUT"
	case jetstream.KeyValueDelete:
		return "DEL"
	case jetstream.KeyValuePurge:
		return "PURGE"
	}
	return op.String()
}

// when formats a time as UTC RFC 3339 with its age.
func (a *app) when(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339) + " (" + ago(a.cli.Now().Sub(t)) + ")"
}

// ago renders an age compactly: "850ms ago", "1.5s ago", "42s ago", "3m10s ago", "5h2m ago", "3d4h ago".
func ago(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	var s string
	switch {
	case d < time.Second:
		s = d.Round(time.Millisecond).String()
	case d < 10*time.Second:
		s = d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		s = d.Round(time.Second).String()
	case d < 48*time.Hour:
		s = strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	default:
		days := int(d / (24 * time.Hour))
		s = fmt.Sprintf("%dd%dh", days, int((d%(24*time.Hour))/time.Hour))
	}
	return s + " ago"
}

// sortedKeys returns a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

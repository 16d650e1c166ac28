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
	"unicode/utf8"

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

// maxTableWidth is the most columns a table that fit applies to takes, as
// long as its last column is at most lastColumnRoom wide.
const maxTableWidth = 120

// lastColumnRoom is the width fit keeps for a table's last column. That
// column is never cut (it is the data: a longer value only makes its own
// line longer, never pads the others).
const lastColumnRoom = 40

// minCutWidth is the narrowest a column that fit may cut becomes.
const minCutWidth = 12

// table writes aligned columns. Rows are kept until flush, so fit can
// measure them first.
type table struct {
	w     io.Writer
	rows  [][]string
	width int   // 0: no limit
	cut   []int // columns fit may cut, to make the table width columns wide
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{w: w}
	t.row(header...)
	return t
}

// fit makes flush cut cells of cols (widest column first, each down to
// minCutWidth at most) until every line is at most width columns, counting
// at most lastColumnRoom of the last column, which is never cut.
func (t *table) fit(width int, cols ...int) *table {
	t.width, t.cut = width, cols
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
	}
	t.rows = append(t.rows, cells)
}

// flush writes the table and reports whether a cell was cut to fit.
func (t *table) flush() bool {
	widths := t.fitWidths()
	cut := false
	tw := tabwriter.NewWriter(t.w, 0, 0, 2, ' ', 0)
	for ri, cells := range t.rows {
		for i, c := range cells {
			if ri > 0 && i < len(widths)-1 && utf8.RuneCountInString(c) > widths[i] {
				cells[i], cut = truncateRunes(c, widths[i]), true
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	_ = tw.Flush()
	return cut
}

// fitWidths returns the width each column may take (nil: no limit).
func (t *table) fitWidths() []int {
	if t.width <= 0 || len(t.cut) == 0 {
		return nil
	}
	var widths []int
	for _, cells := range t.rows {
		for i, c := range cells {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	last := len(widths) - 1
	total := 2*last + min(widths[last], lastColumnRoom)
	for _, w := range widths[:last] {
		total += w
	}
	for total > t.width {
		widest := -1
		for _, c := range t.cut {
			if c < last && widths[c] > minCutWidth && (widest < 0 || widths[c] > widths[widest]) {
				widest = c
			}
		}
		if widest < 0 {
			break // nothing left to cut: the other columns alone are too wide
		}
		widths[widest]--
		total--
	}
	return widths
}

// truncateRunes cuts s to n runes, the last one an ellipsis.
func truncateRunes(s string, n int) string {
	if n < 1 {
		return ""
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

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

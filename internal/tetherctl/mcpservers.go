package tetherctl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/tether-dev/tether/kvconfig"
)

// Top-level keys that hold the servers of an MCP client's config file:
// "mcpServers" (Claude Desktop, Cursor, Claude Code, Windsurf) and
// "servers" (VS Code's mcp.json).
const (
	fileKeyMCPServers = "mcpServers"
	fileKeyServers    = "servers"
)

// supportedEntryFields are the fields of an mcpServers entry Tether keeps.
var supportedEntryFields = map[string]bool{
	"type": true, "transport": true, "command": true, "args": true, "env": true,
	"url": true, "headers": true, "timeout": true, "retry": true, "idempotent_tools": true,
}

// clientTypes maps an entry's "type" to a Tether transport.
var clientTypes = map[string]string{
	"stdio":           kvconfig.TransportStdio,
	"http":            kvconfig.TransportHTTP,
	"streamable-http": kvconfig.TransportHTTP,
	"streamable_http": kvconfig.TransportHTTP,
	"streamableHttp":  kvconfig.TransportHTTP,
	"sse":             kvconfig.TransportSSE,
}

// serverEntry is one converted mcpServers entry.
type serverEntry struct {
	Name    string
	Value   []byte   // our config value, compact JSON, validated
	Notes   []string // dropped fields and other remarks
	Skipped string   // why the entry is not imported ("" = imported)
}

// serversFile is a parsed mcpServers file.
type serversFile struct {
	Entries []serverEntry // sorted by name
	Ignored []string      // other top-level keys, e.g. "inputs"
}

// isServersFile reports whether data is a JSON object with an mcpServers
// (or VS Code "servers") member.
func isServersFile(data []byte) bool {
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) != nil {
		return false
	}
	_, a := top[fileKeyMCPServers]
	_, b := top[fileKeyServers]
	return a || b
}

// parseServersFile converts every entry; the error lists every problem of
// every invalid entry, one per line (all-or-nothing). A key repeated in the
// file, in "mcpServers" or in an entry is an error: reading into a map
// would keep only its last value, one a reviewer may not have looked at.
func parseServersFile(data []byte, drop bool) (serversFile, error) {
	var f serversFile
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return f, fmt.Errorf("not a JSON object: %w", err)
	}
	if dups := kvconfig.DuplicateKeys(data); len(dups) > 0 {
		return f, fmt.Errorf("top-level key(s) %s appear more than once; keep exactly one of each", quoteList(truncateAll(dups)))
	}
	raw, ok := top[fileKeyMCPServers]
	if _, vs := top[fileKeyServers]; vs {
		if ok {
			return f, errors.New(`both "mcpServers" and "servers" are present; keep one`)
		}
		raw, ok = top[fileKeyServers], true
	}
	if !ok {
		return f, errors.New(`no "mcpServers" object; expected {"mcpServers":{"<server>":{"command":...} or {"url":...}}}`)
	}
	for _, k := range sortedKeys(top) {
		if k != fileKeyMCPServers && k != fileKeyServers {
			f.Ignored = append(f.Ignored, k)
		}
	}
	var servers map[string]json.RawMessage
	if err := json.Unmarshal(raw, &servers); err != nil || servers == nil {
		return f, errors.New(`"mcpServers" must be an object of server name -> entry`)
	}
	var errs []error
	for _, name := range kvconfig.DuplicateKeys(raw) {
		errs = append(errs, fmt.Errorf("server %q appears more than once in \"mcpServers\"; keep exactly one", kvconfig.Truncate(name, 64)))
	}
	for _, name := range sortedKeys(servers) {
		e, err := convertEntry(name, servers[name], drop)
		if probs, more := configProblems(err); len(probs) > 0 {
			for _, line := range problemLines(fmt.Sprintf("server %q", name), probs, more) {
				errs = append(errs, errors.New(line))
			}
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("server %q: %w", name, err))
			continue
		}
		f.Entries = append(f.Entries, e)
	}
	return f, errors.Join(errs...)
}

// convertEntry maps one client entry to a Tether config value.
func convertEntry(name string, raw json.RawMessage, drop bool) (serverEntry, error) {
	e := serverEntry{Name: name}
	if err := kvconfig.ValidateID(kvconfig.KindServer, name); err != nil {
		return e, fmt.Errorf("%s; rename it in the file (it becomes part of the KV key)", trimPkg(err))
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return e, errors.New("the entry must be a JSON object")
	}
	if dups := kvconfig.DuplicateKeys(raw); len(dups) > 0 {
		return e, fmt.Errorf("field(s) %s appear more than once; keep exactly one of each", quoteList(truncateAll(dups)))
	}
	if d, ok := m["disabled"]; ok {
		var off bool
		if json.Unmarshal(d, &off) == nil && off {
			e.Skipped = `"disabled": true in the file`
			return e, nil
		}
		delete(m, "disabled")
	}
	var unsupported []string
	for _, k := range sortedKeys(m) {
		if !supportedEntryFields[k] {
			unsupported = append(unsupported, k)
			delete(m, k)
		}
	}
	if len(unsupported) > 0 && !drop {
		return e, fmt.Errorf("unsupported field(s) %s: Tether keeps only type, transport, command, args, env, url, headers, timeout, retry, idempotent_tools; remove them or pass --drop-unsupported", quoteList(unsupported))
	}
	for _, k := range unsupported {
		e.Notes = append(e.Notes, fmt.Sprintf("dropped unsupported field %q", k))
	}
	if err := mapType(m); err != nil {
		return e, err
	}
	if field := placeholder(m); field != "" {
		return e, fmt.Errorf("field %q holds a ${...} variable: Tether does not expand client variables; put the real value in the file", field)
	}
	value, err := json.Marshal(m)
	if err != nil {
		return e, err
	}
	if _, err := kvconfig.DecodeConfig(value); err != nil {
		return e, err // every problem; parseServersFile lists them
	}
	e.Value = value
	return e, nil
}

// truncateAll bounds each of names for a message.
func truncateAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = kvconfig.Truncate(n, 64)
	}
	return out
}

// mapType replaces the client's "type" with our "transport".
func mapType(m map[string]json.RawMessage) error {
	raw, ok := m["type"]
	if !ok {
		return nil
	}
	delete(m, "type")
	var typ string
	if err := json.Unmarshal(raw, &typ); err != nil {
		return errors.New(`field "type" must be a string: stdio, http, streamable-http or sse`)
	}
	transport, ok := clientTypes[typ]
	if !ok {
		return fmt.Errorf(`field "type": %q is not one of stdio, http, streamable-http, sse`, typ)
	}
	if t, has := m["transport"]; has {
		var tt string
		if json.Unmarshal(t, &tt) == nil && tt != transport {
			return fmt.Errorf(`fields "type" (%s) and "transport" (%s) disagree; keep one`, typ, tt)
		}
	}
	m["transport"], _ = json.Marshal(transport)
	return nil
}

// placeholder returns the first field whose string value holds a client
// variable such as ${input:token} or ${env:HOME}.
func placeholder(m map[string]json.RawMessage) string {
	for _, k := range sortedKeys(m) {
		var v any
		if json.Unmarshal(m[k], &v) != nil {
			continue
		}
		if p := findPlaceholder(k, v); p != "" {
			return p
		}
	}
	return ""
}

func findPlaceholder(path string, v any) string {
	switch x := v.(type) {
	case string:
		if strings.Contains(x, "${") {
			return path
		}
	case []any:
		for i, e := range x {
			if p := findPlaceholder(fmt.Sprintf("%s[%d]", path, i), e); p != "" {
				return p
			}
		}
	case map[string]any:
		for _, k := range sortedKeys(x) {
			if p := findPlaceholder(path+"."+k, x[k]); p != "" {
				return p
			}
		}
	}
	return ""
}

// flatten turns a config value into field path -> compact JSON value,
// e.g. "env.TOKEN" -> "\"x\"", "args" -> "[\"a\"]": exactly the fields
// the stored bytes hold, nothing inferred. An import's diff is made of it.
func flatten(value []byte) (map[string]string, error) {
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("not a JSON object")
	}
	out := map[string]string{}
	flattenInto("", m, out)
	return out, nil
}

// equivalent reports whether two values are the same config once decoded:
// the transport inferred ({"command":"x"} is {"transport":"stdio",
// "command":"x"}), key order and spacing ignored. Writing one over the
// other would change nothing an agent sees.
func equivalent(a, b []byte) bool {
	ca, err := kvconfig.DecodeConfig(a)
	if err != nil {
		return false
	}
	cb, err := kvconfig.DecodeConfig(b)
	if err != nil {
		return false
	}
	na, errA := json.Marshal(ca)
	nb, errB := json.Marshal(cb)
	if errA != nil || errB != nil {
		return false
	}
	fa, errA := flatten(na)
	fb, errB := flatten(nb)
	return errA == nil && errB == nil && maps.Equal(fa, fb)
}

func flattenInto(prefix string, v any, out map[string]string) {
	if obj, ok := v.(map[string]any); ok {
		for k, x := range obj {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			flattenInto(p, x, out)
		}
		return
	}
	b, _ := json.Marshal(v)
	out[prefix] = string(b)
}

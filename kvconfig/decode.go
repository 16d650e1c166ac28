package kvconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// The exact field names of a config value, in the order messages list
// them. encoding/json matches names case-insensitively; a value must not,
// or {"ENV":{...}} would be stored and then escape masking that looks for
// "env".
var (
	configFields = []string{"transport", "command", "args", "env", "url", "headers", "timeout", "retry", "idempotent_tools"}
	retryFields  = []string{"max_attempts", "base_delay", "max_delay", "jitter"}
)

// DecodeConfig decodes and validates a config value strictly and reports
// every problem at once: unknown fields (at their full path, e.g.
// "retry.max_attemps"), duplicate keys at any level, a wrong type per
// field, and each broken semantic rule of Validate. A value that is not
// one JSON object (malformed, trailing data, too large) is one problem.
// The returned error is a *ConfigErrors without key or revision; callers
// that know them fill them in (see Index).
func DecodeConfig(data []byte) (*ServerConfig, error) {
	c, p := decodeConfig(data)
	if err := p.err(); err != nil {
		return nil, err
	}
	return c, nil
}

func decodeConfig(data []byte) (*ServerConfig, *problems) {
	p := &problems{}
	if len(data) > MaxConfigBytes {
		p.addf("", "value is %d bytes, more than the %d allowed", len(data), MaxConfigBytes)
		return nil, p
	}
	members, ok := document(p, data, `{"url":"https://..."}`)
	if !ok {
		return nil, p
	}
	var c ServerConfig
	// A field that cannot be decoded is left zero. The transport rules
	// would then report transport, command or url again, as missing, so
	// they are skipped; every other rule accepts a zero field.
	decoded := true
	for _, m := range uniqueKeys(p, "", members, configFields) {
		decoded = decodeField(p, &c, m) && decoded
	}
	c.validate(p, !decoded)
	return &c, p
}

// decodeField decodes one known top-level member into c. It returns false
// when transport, command or url could not be decoded.
func decodeField(p *problems, c *ServerConfig, m member) bool {
	switch m.key {
	case "transport":
		return decodeValue(p, m.key, m.raw, &c.Transport)
	case "command":
		return decodeValue(p, m.key, m.raw, &c.Command)
	case "url":
		return decodeValue(p, m.key, m.raw, &c.URL)
	case "args":
		c.Args = decodeStrings(p, m.key, m.raw)
	case "env":
		c.Env = decodeStringMap(p, m.key, m.raw)
	case "headers":
		c.Headers = decodeStringMap(p, m.key, m.raw)
	case "timeout":
		decodeValue(p, m.key, m.raw, &c.Timeout)
	case "retry":
		c.Retry = decodeRetry(p, m.key, m.raw)
	case "idempotent_tools":
		c.IdempotentTools = decodeStrings(p, m.key, m.raw)
	}
	return true
}

func decodeRetry(p *problems, path string, raw json.RawMessage) *RetryConfig {
	if isNull(raw) {
		return nil
	}
	members, ok := objectMembers(raw)
	if !ok {
		p.add(path, typeError(raw, "kvconfig.RetryConfig"))
		return nil
	}
	var r RetryConfig
	for _, m := range uniqueKeys(p, path+".", members, retryFields) {
		field := path + "." + m.key
		switch m.key {
		case "max_attempts":
			decodeValue(p, field, m.raw, &r.MaxAttempts)
		case "base_delay":
			decodeValue(p, field, m.raw, &r.BaseDelay)
		case "max_delay":
			decodeValue(p, field, m.raw, &r.MaxDelay)
		case "jitter":
			decodeValue(p, field, m.raw, &r.Jitter)
		}
	}
	return &r
}

// document checks that data is exactly one JSON object and returns its
// members in document order. Anything else is one problem: the value
// cannot be read field by field. example is a value of the right shape,
// for the message.
func document(p *problems, data []byte, example string) ([]member, bool) {
	if len(bytes.TrimSpace(data)) == 0 {
		p.addf("", "value is empty; write a JSON object such as %s", example)
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		p.add("", syntaxError(err))
		return nil, false
	}
	if _, err := dec.Token(); err != io.EOF {
		p.add("", errors.New("trailing data after the JSON object"))
		return nil, false
	}
	members, ok := objectMembers(raw)
	if !ok {
		p.addf("", "wrong type: JSON %s where an object such as %s is expected", jsonKind(raw), example)
		return nil, false
	}
	return members, true
}

func syntaxError(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("malformed JSON at byte %d: %w", se.Offset, err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("malformed JSON: the value ends before the object is closed")
	}
	return fmt.Errorf("malformed JSON: %w", err)
}

// member is one key of a JSON object and its raw value.
type member struct {
	key string // unescaped
	raw json.RawMessage
}

// objectMembers returns the members of raw, a syntactically valid JSON
// value, in document order, duplicates included; ok is false when raw is
// not an object.
func objectMembers(raw []byte) (members []member, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, false
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			break // cannot happen: raw is valid JSON
		}
		key, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			break
		}
		members = append(members, member{key, v})
	}
	return members, true
}

// DuplicateKeys returns each key that appears more than once at the top
// level of the JSON object data, in document order; nil when there is none
// or data is not an object (a syntax error ends the scan). It is for
// callers that read an object into a Go map, which silently keeps only the
// last value of a repeated key.
func DuplicateKeys(data []byte) []string {
	members, _ := objectMembers(data)
	seen := make(map[string]int, len(members))
	var dups []string
	for _, m := range members {
		if seen[m.key]++; seen[m.key] == 2 {
			dups = append(dups, m.key)
		}
	}
	return dups
}

// arrayElems returns the elements of raw, a syntactically valid JSON value;
// ok is false when raw is not an array.
func arrayElems(raw []byte) (elems []json.RawMessage, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return nil, false
	}
	for dec.More() {
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			break // cannot happen: raw is valid JSON
		}
		elems = append(elems, v)
	}
	return elems, true
}

// uniqueKeys reports each key that appears more than once (a duplicate is
// a way to show a reviewer one value while encoding/json keeps another)
// and, when fields is not nil, each key that is not exactly one of fields.
// It returns the first occurrence of each known key, in document order.
// prefix is the path of the object, e.g. "retry.".
func uniqueKeys(p *problems, prefix string, members []member, fields []string) []member {
	seen := make(map[string]int, len(members))
	out := make([]member, 0, len(members))
	for _, m := range members {
		seen[m.key]++
		known := fields == nil || slices.Contains(fields, m.key)
		switch {
		case seen[m.key] > 1:
			if seen[m.key] == 2 && known {
				p.addf(prefix+Truncate(m.key, 64), "duplicate key (it appears more than once); keep exactly one")
			}
		case !known:
			p.add(prefix+Truncate(m.key, 64), unknownField(m.key, prefix, fields))
		default:
			out = append(out, m)
		}
	}
	return out
}

func unknownField(key, prefix string, fields []string) error {
	hint := "check the spelling"
	if slices.ContainsFunc(fields, func(f string) bool { return strings.EqualFold(f, key) }) {
		hint = "names are case-sensitive"
	}
	whose := "fields are"
	if obj := strings.TrimSuffix(prefix, "."); obj != "" {
		whose = obj + "'s fields are"
	}
	return fmt.Errorf("unknown field (%s; %s %s)", hint, whose, strings.Join(fields, ", "))
}

// decodeValue decodes raw into dst (a pointer), reporting a type error at
// path. dst is left unchanged on error.
func decodeValue(p *problems, path string, raw json.RawMessage, dst any) bool {
	err := json.Unmarshal(raw, dst)
	if err == nil {
		return true
	}
	var ute *json.UnmarshalTypeError
	switch {
	case errors.As(err, &ute) && ute.Type == durationType:
		p.addf(path, "%s is not a duration: want a duration string such as \"30s\" or \"500ms\"", ute.Value)
	case errors.As(err, &ute):
		p.addf(path, "wrong type: JSON %s where %s is expected", Truncate(ute.Value, 40), ute.Type)
	default:
		p.add(path, err)
	}
	return false
}

// decodeStrings decodes a JSON array of strings element by element, so
// every bad element is reported at its index. An empty array is nil.
func decodeStrings(p *problems, path string, raw json.RawMessage) []string {
	if isNull(raw) {
		return nil
	}
	elems, ok := arrayElems(raw)
	if !ok {
		p.add(path, typeError(raw, "[]string"))
		return nil
	}
	var out []string
	for i, e := range elems {
		var s string
		if decodeValue(p, fmt.Sprintf("%s[%d]", path, i), e, &s) {
			out = append(out, s)
		}
	}
	return out
}

// decodeStringMap decodes a JSON object of strings entry by entry, with
// duplicate keys reported. An empty object is nil.
func decodeStringMap(p *problems, path string, raw json.RawMessage) map[string]string {
	if isNull(raw) {
		return nil
	}
	members, ok := objectMembers(raw)
	if !ok {
		p.add(path, typeError(raw, "map[string]string"))
		return nil
	}
	var out map[string]string
	for _, m := range uniqueKeys(p, path+".", members, nil) {
		var s string
		if !decodeValue(p, path+"."+Truncate(m.key, 64), m.raw, &s) {
			continue
		}
		if out == nil {
			out = make(map[string]string, len(members))
		}
		out[m.key] = s
	}
	return out
}

func typeError(raw []byte, want string) error {
	return fmt.Errorf("wrong type: JSON %s where %s is expected", jsonKind(raw), want)
}

func isNull(raw []byte) bool { return string(raw) == "null" }

// jsonKind names the kind of a valid JSON value as encoding/json's type
// errors do.
func jsonKind(raw []byte) string {
	if len(raw) == 0 {
		return "value"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

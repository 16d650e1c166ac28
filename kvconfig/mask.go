package kvconfig

import (
	"bytes"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
)

// Masked is the placeholder shown instead of a secret.
const Masked = "****"

// Masking is one rule set, used by every output people look at (logs,
// explain, fleet status, the dashboard, tetherctl): env and header values,
// every arg, a URL's userinfo and its query values. Masked applies it to a
// decoded config; MaskValue to a stored value that may not even decode.

// Masked returns a copy with every secret replaced by "****", for logs and
// human output. The receiver is not changed.
func (c *ServerConfig) Masked() *ServerConfig {
	m := *c
	m.Env = maskMap(c.Env)
	m.Headers = maskMap(c.Headers)
	if c.Args != nil {
		m.Args = make([]string, len(c.Args))
		for i := range m.Args {
			m.Args[i] = Masked
		}
	}
	m.URL = MaskURL(c.URL)
	return &m
}

// MaskURL masks a URL's userinfo (a username can be a token, as in
// https://TOKEN@host) and every query value, keeping scheme, host, path and
// query keys; a URL that does not parse is masked whole. The mask is not
// percent-encoded.
func MaskURL(s string) string {
	if s == "" {
		return s
	}
	u, err := url.Parse(s)
	if err != nil {
		return Masked
	}
	if u.User == nil && u.RawQuery == "" && u.Fragment == "" {
		return s
	}
	var b strings.Builder
	if u.Scheme != "" {
		b.WriteString(u.Scheme + "://")
	}
	if u.User != nil {
		b.WriteString(Masked + "@")
	}
	b.WriteString(u.Host)
	b.WriteString(u.EscapedPath())
	if u.RawQuery != "" {
		keys := make([]string, 0, 4)
		for k := range u.Query() {
			keys = append(keys, url.QueryEscape(k)+"="+Masked)
		}
		slices.Sort(keys)
		b.WriteString("?" + strings.Join(keys, "&"))
	}
	if u.Fragment != "" {
		b.WriteString("#" + Masked)
	}
	return b.String()
}

// UnreadableValue stands in for a stored value that is not a JSON object
// and so cannot be masked field by field.
const UnreadableValue = `"<not a JSON object; hidden>"`

// MaskValue masks a stored config value as Masked does a decoded one, for
// values that may be invalid: field names in any spelling ("ENV",
// "Headers"), wrong types (a string where an object belongs is masked
// whole). A value that is not a JSON object is hidden whole.
func MaskValue(raw []byte) json.RawMessage {
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil || m == nil {
		return json.RawMessage(UnreadableValue)
	}
	for f, v := range m {
		switch secretKind(f) {
		case secretMap:
			if obj, ok := v.(map[string]any); ok {
				for k := range obj {
					obj[k] = Masked
				}
			} else {
				m[f] = Masked
			}
		case secretList:
			if arr, ok := v.([]any); ok {
				for i := range arr {
					arr[i] = Masked
				}
			} else {
				m[f] = Masked
			}
		case secretURL:
			if str, ok := v.(string); ok {
				m[f] = MaskURL(str)
			} else {
				m[f] = Masked
			}
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return json.RawMessage(UnreadableValue)
	}
	return bytes.TrimRight(buf.Bytes(), "\n")
}

// What a config field holds that is secret.
const (
	notSecret  = iota
	secretMap  // env, headers: every value
	secretList // args: every element
	secretURL  // url: userinfo, query values, fragment
)

// secretKind classifies a config field name in any spelling.
func secretKind(field string) int {
	switch strings.ToLower(field) {
	case "env", "headers":
		return secretMap
	case "args":
		return secretList
	case "url":
		return secretURL
	}
	return notSecret
}

// MaskField masks one field of a flattened config ("env.TOKEN",
// "headers.Authorization", "args", "url") whose JSON-encoded value is v,
// by the same rules as MaskValue; other fields come back unchanged.
func MaskField(path, v string) string {
	top, _, _ := strings.Cut(path, ".")
	switch secretKind(top) {
	case secretMap, secretList:
		return Masked
	case secretURL:
		var u string
		if json.Unmarshal([]byte(v), &u) != nil {
			return Masked
		}
		b, _ := json.Marshal(MaskURL(u))
		return string(b)
	}
	return v
}

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
// every arg, a URL's userinfo, its query values and fragment, and the URL
// path segments and query keys that look like a key or token (MaskURL).
// Masked applies it to a decoded config; MaskValue to a stored value that
// may not even decode; MaskField to one flattened field.

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
// https://TOKEN@host), every query value and the fragment, keeping scheme,
// host, path and query keys; a URL that does not parse is masked whole.
// A path segment or query key is masked too when it looks like a key or
// token, judged percent-decoded: it starts with a well-known key prefix
// (sk-, sk_, rk_, ghp_, gho_, ghu_, ghs_, ghr_, github_pat_, glpat-, xoxa-,
// xoxb-, xoxe-, xoxp-, xoxr-, xoxs-, AKIA, ASIA, AIza, hf_, npm_, pypi-)
// followed by at least 8 more characters, or it is at least 16 characters
// long and holds both a letter and a digit. So /mcp/sk-proj-… and Slack's
// /services/T0/B0/<24 characters> are masked; /v1/mcp, /api/tools,
// /2025-03-26/mcp and /streamable-http are kept. The mask is not
// percent-encoded. A URL with nothing to mask comes back unchanged.
func MaskURL(s string) string {
	if s == "" {
		return s
	}
	u, err := url.Parse(s)
	if err != nil {
		return Masked
	}
	path, pathMasked := u.EscapedPath(), false
	if u.Opaque != "" {
		path = u.Opaque
	}
	if p, ok := maskPath(path); ok {
		path, pathMasked = p, true
	}
	if u.User == nil && u.RawQuery == "" && u.Fragment == "" && !pathMasked {
		return s
	}
	var b strings.Builder
	if u.Scheme != "" {
		b.WriteString(u.Scheme + ":")
	}
	if u.Opaque == "" && (u.Scheme != "" || u.Host != "" || u.User != nil) {
		b.WriteString("//")
	}
	if u.User != nil {
		b.WriteString(Masked + "@")
	}
	b.WriteString(u.Host)
	b.WriteString(path)
	if u.RawQuery != "" {
		keys := make([]string, 0, 4)
		for k := range u.Query() {
			if looksLikeToken(k) {
				keys = append(keys, Masked+"="+Masked)
			} else {
				keys = append(keys, url.QueryEscape(k)+"="+Masked)
			}
		}
		slices.Sort(keys)
		b.WriteString("?" + strings.Join(keys, "&"))
	}
	if u.Fragment != "" {
		b.WriteString("#" + Masked)
	}
	return b.String()
}

// MaskURLs masks each URL of a comma-separated list, such as NATS server
// URLs (whose userinfo is a user and password, or a token), with MaskURL.
// One without "://" is read as [userinfo@]host[:port], as NATS reads it.
func MaskURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if strings.Contains(p, "://") {
			parts[i] = MaskURL(p)
		} else {
			parts[i] = strings.TrimPrefix(MaskURL("//"+p), "//")
		}
	}
	return strings.Join(parts, ",")
}

// maskPath replaces each segment of an escaped path that looksLikeToken
// (judged percent-decoded) with the mask; false if none does.
func maskPath(p string) (string, bool) {
	segs := strings.Split(p, "/")
	masked := false
	for i, seg := range segs {
		dec, err := url.PathUnescape(seg)
		if err != nil {
			dec = seg
		}
		if looksLikeToken(dec) {
			segs[i], masked = Masked, true
		}
	}
	return strings.Join(segs, "/"), masked
}

// The rule for URL path segments and query keys (MaskURL). Tokens end up
// in URLs (https://h/mcp/sk-..., Slack's /services/T0/B0/XXXX, a key as a
// bare query) where no field name says so, while paths like /v1/mcp,
// /api/tools, /2025-03-26/mcp and /streamable-http must stay readable.
const (
	// minTokenLen is the length from which a segment holding both a letter
	// and a digit counts as a token: random keys mix them, words and
	// versions rarely do at this length. UUIDs and long hex ids count too;
	// masking errs toward hiding (--show-secrets shows the real value).
	minTokenLen = 16
	// minAfterKeyPrefix is how many characters must follow a known key
	// prefix, so that words such as "sk-learn" are kept.
	minAfterKeyPrefix = 8
)

// keyPrefixes are the prefixes of well-known API keys and tokens
// (case-sensitive): OpenAI and Anthropic (sk-), Stripe (sk_, rk_), GitHub
// (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_), GitLab (glpat-), Slack
// (xoxa-, xoxb-, xoxe-, xoxp-, xoxr-, xoxs-), AWS access key ids (AKIA,
// ASIA), Google API keys (AIza), Hugging Face (hf_), npm (npm_), PyPI
// (pypi-).
var keyPrefixes = []string{"sk-", "sk_", "rk_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-",
	"xoxa-", "xoxb-", "xoxe-", "xoxp-", "xoxr-", "xoxs-", "AKIA", "ASIA", "AIza", "hf_", "npm_", "pypi-"}

// looksLikeToken reports whether a URL path segment or query key looks
// like a key or token: a known key prefix (keyPrefixes) followed by at
// least minAfterKeyPrefix characters, or at least minTokenLen characters
// holding both an ASCII letter and a digit.
func looksLikeToken(seg string) bool {
	for _, p := range keyPrefixes {
		if len(seg) >= len(p)+minAfterKeyPrefix && strings.HasPrefix(seg, p) {
			return true
		}
	}
	if len(seg) < minTokenLen {
		return false
	}
	letter, digit := false, false
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case c >= '0' && c <= '9':
			digit = true
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
			letter = true
		}
	}
	return letter && digit
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
	secretURL  // url: userinfo, query values, fragment, token-like path segments
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

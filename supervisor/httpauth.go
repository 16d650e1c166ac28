package supervisor

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
)

// HTTP access control: a bearer token when HTTPAddr is not loopback, and a
// Host header check on every listen (DNS rebinding).
const (
	// HTTPTokenFileName is the token file's name under <DataDir>/auth/, the
	// default of Config.HTTPTokenFile.
	HTTPTokenFileName = "http.token"
	// HTTPTokenCookie is the cookie the dashboard's one-time ?token= link
	// sets (HttpOnly, SameSite=Strict). Its value is derived from the
	// token, not the token itself.
	HTTPTokenCookie = "tether_token"
	// httpTokenBytes is the entropy of a generated token (hex encoded).
	httpTokenBytes = 32
	// minHTTPToken bounds a token read from a file (characters).
	minHTTPToken = 32
)

// errHTTPToken prefixes every token file error.
var errHTTPToken = errors.New("supervisor: HTTP token")

// isLoopbackHost reports whether a listen or Host host (no port, IPv6
// without brackets) is loopback: "localhost", 127.0.0.0/8 or ::1. An
// empty host (all interfaces) and any other name are not.
func isLoopbackHost(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// httpNeedsToken reports whether HTTPAddr needs the bearer token.
func (c *Config) httpNeedsToken() bool {
	if c.HTTPAddr == "" {
		return false
	}
	host, _, err := net.SplitHostPort(c.HTTPAddr)
	return err != nil || !isLoopbackHost(host)
}

// httpTokenPath is HTTPTokenFile, or <DataDir>/auth/http.token.
func (c *Config) httpTokenPath() string {
	if c.HTTPTokenFile != "" {
		return c.HTTPTokenFile
	}
	if c.DataDir == "" {
		return ""
	}
	return filepath.Join(c.DataDir, "auth", HTTPTokenFileName)
}

// loadHTTPToken reads the token at path or, when there is none, creates it
// (directory 0700, file 0600) from httpTokenBytes of crypto/rand, hex. Two
// processes creating it at once end up with the same token: the file
// appears complete, by a hard link, or not at all.
func loadHTTPToken(path string) (tok string, created bool, err error) {
	if tok, err = readHTTPToken(path); !errors.Is(err, fs.ErrNotExist) {
		return tok, false, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, fmt.Errorf("%w: create %s: %w", errHTTPToken, dir, err)
	}
	raw := make([]byte, httpTokenBytes)
	if _, err := rand.Read(raw); err != nil {
		return "", false, fmt.Errorf("%w: random: %w", errHTTPToken, err)
	}
	tok = hex.EncodeToString(raw)
	tmp, err := os.CreateTemp(dir, "."+HTTPTokenFileName+"-*") // mode 0600
	if err != nil {
		return "", false, fmt.Errorf("%w: %w", errHTTPToken, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(tok + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", false, fmt.Errorf("%w: write %s: %w", errHTTPToken, tmp.Name(), err)
	}
	switch err := os.Link(tmp.Name(), path); {
	case err == nil:
		return tok, true, nil
	case errors.Is(err, fs.ErrExist): // another process won
		tok, err = readHTTPToken(path)
		return tok, false, err
	}
	// No hard links on this file system: exclusive create instead.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		tok, err = readHTTPToken(path)
		return tok, false, err
	}
	if err != nil {
		return "", false, fmt.Errorf("%w: create %s: %w", errHTTPToken, path, err)
	}
	_, err = f.WriteString(tok + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", false, fmt.Errorf("%w: write %s: %w", errHTTPToken, path, err)
	}
	return tok, true, nil
}

// readHTTPToken reads and checks a token file: one line of at least
// minHTTPToken printable ASCII characters without spaces.
func readHTTPToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		return "", fmt.Errorf("%w: read %s: %w", errHTTPToken, path, err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < minHTTPToken {
		return "", fmt.Errorf("%w: %s holds %d characters, want at least %d (delete it to have one generated)",
			errHTTPToken, path, len(tok), minHTTPToken)
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] > '~' {
			return "", fmt.Errorf("%w: %s: character %d is not printable ASCII without spaces", errHTTPToken, path, i)
		}
	}
	return tok, nil
}

// hostRule is one accepted Host: a name or IP (lower case, IPs in
// canonical form) and a port, "" for any port.
type hostRule struct{ host, port string }

// anyIP in a hostRule's host accepts every IP literal.
const anyIP = "*ip"

// parseHostRule parses "name", "name:port", "1.2.3.4", "[::1]:8080".
func parseHostRule(s string) (hostRule, error) {
	host, port, ok := splitHost(s)
	if !ok || host == "" || strings.ContainsAny(host, "/?#@*% ") {
		return hostRule{}, fmt.Errorf("%q: want a host name or IP, optionally with :port", s)
	}
	return hostRule{host, port}, nil
}

// splitHost splits a Host header or rule into a normalised host and port
// ("" when absent). ok is false for a malformed one.
func splitHost(s string) (host, port string, ok bool) {
	s = strings.TrimSpace(s)
	if h, p, err := net.SplitHostPort(s); err == nil {
		host, port = h, p
		if port == "" || strings.Trim(port, "0123456789") != "" {
			return "", "", false
		}
	} else if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		host = s[1 : len(s)-1]
	} else if strings.Contains(s, ":") && !strings.Contains(s, "]") {
		host = s // a bare IPv6 literal in a rule
		if _, err := netip.ParseAddr(host); err != nil {
			return "", "", false
		}
	} else {
		host = s
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().WithZone("").String()
	} else if strings.ContainsAny(host, "[]:") {
		return "", "", false
	}
	return host, port, true
}

// allowedHosts are the Host headers a server listening on listen (a
// resolved host:port) accepts. Loopback names and IPs are always accepted:
// a rebinding page's Host is the attacker's name, never one of these. On a
// loopback listen they must carry its port; on any other listen any port
// (a published or forwarded port differs). Then extra, or when extra is
// empty and the listen is not loopback: the listen host (any IP literal
// when it is unspecified) and the machine's hostname.
func allowedHosts(listen string, extra []string, hostname string) ([]hostRule, error) {
	lhost, lport, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("supervisor: HTTP listen address %q: %w", listen, err)
	}
	loop := isLoopbackHost(lhost)
	port := ""
	if loop {
		port = lport
	}
	rules := []hostRule{{"localhost", port}, {"127.0.0.1", port}, {"::1", port}}
	if loop && lhost != "" {
		if h, _, ok := splitHost(lhost); ok {
			rules = append(rules, hostRule{h, port})
		}
	}
	for _, e := range extra {
		r, err := parseHostRule(e)
		if err != nil {
			return nil, fmt.Errorf("supervisor: HTTPAllowedHosts %w", err)
		}
		rules = append(rules, r)
	}
	if len(extra) > 0 || loop {
		return rules, nil
	}
	if ip, err := netip.ParseAddr(lhost); lhost == "" || (err == nil && ip.IsUnspecified()) {
		rules = append(rules, hostRule{anyIP, ""})
	} else if h, _, ok := splitHost(lhost); ok {
		rules = append(rules, hostRule{h, ""})
	}
	if h, _, ok := splitHost(hostname); ok && h != "" {
		rules = append(rules, hostRule{h, ""})
	}
	return rules, nil
}

// hostAllowed reports whether a request's Host header matches a rule. A
// Host without a port is port 80.
func hostAllowed(rules []hostRule, header string) bool {
	host, port, ok := splitHost(header)
	if !ok || host == "" {
		return false
	}
	if port == "" {
		port = "80"
	}
	_, ipErr := netip.ParseAddr(host)
	for _, r := range rules {
		if (r.host == host || (r.host == anyIP && ipErr == nil)) && (r.port == "" || r.port == port) {
			return true
		}
	}
	return false
}

// httpGuard checks the Host header and, when token is set, the bearer
// token in front of every route but /healthz and /readyz.
type httpGuard struct {
	next      http.Handler
	hosts     []hostRule
	token     []byte // sha256 of the token; nil: no token needed
	cookie    []byte // sha256 of the cookie value
	cookieVal string
	tokenFile string
	log       zerolog.Logger
}

// newHTTPGuard builds the guard for a server listening on listen (its
// resolved address), loading or creating the token when cfg needs one.
func newHTTPGuard(cfg *Config, listen string, next http.Handler, log zerolog.Logger) (*httpGuard, error) {
	hostname, _ := os.Hostname()
	hosts, err := allowedHosts(listen, cfg.HTTPAllowedHosts, hostname)
	if err != nil {
		return nil, err
	}
	g := &httpGuard{next: next, hosts: hosts, log: log} // log is sampled by the caller
	if !cfg.httpNeedsToken() {
		return g, nil
	}
	g.tokenFile = cfg.httpTokenPath()
	tok, created, err := loadHTTPToken(g.tokenFile)
	if err != nil {
		return nil, err
	}
	if created {
		log.Info().Str("file", g.tokenFile).Msg("generated the HTTP bearer token")
	} else if fi, err := os.Stat(g.tokenFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn().Str("file", g.tokenFile).Str("mode", fi.Mode().Perm().String()).Msg("HTTP token file is readable by others; chmod 600 it")
	}
	g.token = digest(tok)
	mac := hmac.New(sha256.New, []byte(tok))
	mac.Write([]byte("tether dashboard cookie v1"))
	g.cookieVal = hex.EncodeToString(mac.Sum(nil))
	g.cookie = digest(g.cookieVal)
	return g, nil
}

func digest(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}

// matches compares a presented secret with a digest in constant time.
func matches(want []byte, got string) bool {
	return got != "" && subtle.ConstantTimeCompare(want, digest(got)) == 1
}

func (g *httpGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
		// Open, Host included: probes and load balancers send any Host,
		// and these carry no fleet data.
		g.next.ServeHTTP(w, r)
		return
	}
	if !hostAllowed(g.hosts, r.Host) {
		g.log.Warn().Str("host", r.Host).Str("path", r.URL.Path).Str("remote", r.RemoteAddr).Msg("http request refused: Host not allowed")
		g.refuse(w, http.StatusMisdirectedRequest, "misdirected_request", fmt.Sprintf(
			"supervisor: Host %q is not served here (a DNS rebinding guard); open the dashboard by an allowed name, "+
				"or add this one with --http-allowed-hosts (env TETHER_HTTP_ALLOWED_HOSTS)", r.Host))
		return
	}
	if g.token == nil {
		g.next.ServeHTTP(w, r)
		return
	}
	if q := r.URL.Query(); q.Has("token") {
		if !matches(g.token, q.Get("token")) {
			g.unauthorized(w, r, "the ?token= value is not the HTTP token")
			return
		}
		g.setCookie(w, r)
		return
	}
	if auth := r.Header.Get("Authorization"); auth != "" {
		scheme, tok, _ := strings.Cut(auth, " ")
		if !strings.EqualFold(scheme, "Bearer") || !matches(g.token, strings.TrimSpace(tok)) {
			g.unauthorized(w, r, "the Authorization header does not carry the HTTP token")
			return
		}
		g.next.ServeHTTP(w, r)
		return
	}
	if c, err := r.Cookie(HTTPTokenCookie); err == nil && matches(g.cookie, c.Value) {
		g.next.ServeHTTP(w, r)
		return
	}
	g.unauthorized(w, r, "no HTTP token given")
}

// setCookie answers a correct ?token= with the cookie and a redirect to
// the same URL without the token.
func (g *httpGuard) setCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: HTTPTokenCookie, Value: g.cookieVal, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"})
	u := *r.URL
	q := u.Query()
	q.Del("token")
	u.RawQuery = q.Encode()
	loc := u.RequestURI()
	if !strings.HasPrefix(loc, "/") || strings.HasPrefix(loc, "//") || strings.HasPrefix(loc, "/\\") {
		loc = "/" // never a redirect off this origin
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, loc, http.StatusSeeOther)
}

func (g *httpGuard) unauthorized(w http.ResponseWriter, r *http.Request, why string) {
	g.log.Warn().Str("path", r.URL.Path).Str("remote", r.RemoteAddr).Str("why", why).Msg("http request refused: unauthorized")
	w.Header().Set("WWW-Authenticate", `Bearer realm="tether"`)
	g.refuse(w, http.StatusUnauthorized, "unauthorized", fmt.Sprintf(
		"supervisor: %s. This server listens beyond loopback, so it needs the token in %s on the supervisor's host: "+
			"send \"Authorization: Bearer TOKEN\", or open /?token=TOKEN once in a browser (it sets a cookie)",
		why, g.tokenFile))
}

// httpRefusal is the error body of a refused request: the contract's
// {"error":{...}} plus where the token is.
type httpRefusal struct {
	Error     agentproto.ErrorDetail `json:"error"`
	TokenFile string                 `json:"token_file,omitempty"`
}

func (g *httpGuard) refuse(w http.ResponseWriter, status int, code, msg string) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	body := httpRefusal{Error: agentproto.ErrorDetail{Code: code, Status: status, Message: msg}}
	if status == http.StatusUnauthorized {
		body.TokenFile = g.tokenFile
	}
	writeJSON(w, status, body)
}

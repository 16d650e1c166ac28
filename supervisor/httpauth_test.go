package supervisor

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tether-dev/tether/internal/natstest"
)

// httpClient is a client that does not follow redirects (unless jar) and
// drops its connections at the end of the test.
func httpClient(t *testing.T, jar bool) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr}
	if jar {
		c.Jar, _ = cookiejar.New(nil)
	} else {
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	return c
}

// do sends GET url with Host host (the URL's when empty) and the given
// headers (name, value pairs); it returns the response with its body read.
func do(t *testing.T, c *http.Client, url, host string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") == "text/event-stream" {
		return resp, "" // an endless stream: the status and type are enough
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// guarded are the routes a non-loopback listen protects, with the
// Content-Type each answers.
var guarded = map[string]string{
	"/":                "text/html",
	"/agent/a1":        "text/html",
	"/static/fleet.js": "text/javascript",
	"/api/fleet":       "application/json",
	"/api/timeline":    "application/json",
	"/metrics":         "text/plain",
	"/events":          "text/event-stream",
}

// startOpen starts a supervisor on every interface with its data in dir;
// base is http://127.0.0.1:<port>.
func startOpen(t *testing.T, srv *natstest.Server, dir string) (s *Supervisor, base string) {
	cfg := testConfig(t, srv)
	cfg.HTTPAddr = "0.0.0.0:0"
	cfg.DataDir = dir
	s = startSupervisor(t, cfg)
	_, port, err := net.SplitHostPort(s.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	return s, "http://127.0.0.1:" + port
}

func readToken(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "auth", HTTPTokenFileName))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// Over a non-loopback listen every route but /healthz and /readyz needs the
// token: none or a wrong one is a 401 saying where the token is; the right
// one in the Authorization header is a 200.
func TestHTTPTokenRequiredOffLoopback(t *testing.T) {
	srv := natstest.RunServer(t)
	dir := t.TempDir()
	_, base := startOpen(t, srv, dir)
	tok := readToken(t, dir)
	file := filepath.Join(dir, "auth", HTTPTokenFileName)
	c := httpClient(t, false)
	for path, ctype := range guarded {
		for name, hdr := range map[string][]string{
			"none":         nil,
			"wrong":        {"Authorization", "Bearer " + strings.Repeat("0", len(tok))},
			"empty bearer": {"Authorization", "Bearer "},
			"basic":        {"Authorization", "Basic " + tok},
			"cookie":       {"Cookie", HTTPTokenCookie + "=" + tok}, // the token is not the cookie value
		} {
			resp, body := do(t, c, base+path, "", hdr...)
			var e httpRefusal
			if resp.StatusCode != http.StatusUnauthorized || json.Unmarshal([]byte(body), &e) != nil ||
				e.TokenFile != file || !strings.Contains(e.Error.Message, file) || e.Error.Code != "unauthorized" {
				t.Errorf("%s with %s token: %d %s", path, name, resp.StatusCode, body)
			}
			if resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s with %s token: no WWW-Authenticate", path, name)
			}
		}
		for _, auth := range []string{"Bearer " + tok, "bearer " + tok} {
			resp, _ := do(t, c, base+path, "", "Authorization", auth)
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) {
				t.Errorf("%s with the token (%q): %d %s", path, auth[:6], resp.StatusCode, resp.Header.Get("Content-Type"))
			}
		}
	}
	assertProbesOpen(t, c, base, "evil.example")
}

// assertProbesOpen checks /healthz and /readyz answer without a token, for
// any Host, and /readyz carries nothing about the fleet.
func assertProbesOpen(t *testing.T, c *http.Client, base, host string) {
	t.Helper()
	for _, h := range []string{"", host} {
		resp, body := do(t, c, base+"/healthz", h)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"ok"`) {
			t.Errorf("/healthz (Host %q): %d %s", h, resp.StatusCode, body)
		}
		resp, body = do(t, c, base+"/readyz", h)
		var m map[string]any
		if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &m) != nil {
			t.Fatalf("/readyz (Host %q): %d %s", h, resp.StatusCode, body)
		}
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range m {
				if !yield(k) {
					return
				}
			}
		})
		if !slices.Equal(keys, []string{"leader", "ready", "reason", "replica"}) {
			t.Errorf("/readyz carries %v, want only leader, ready, reason, replica", keys)
		}
	}
}

// The browser flow: /...?token= sets an HttpOnly SameSite=Strict cookie and
// redirects to the same URL without the token; with the cookie the page,
// its fetches and the event stream work. A wrong ?token= sets nothing.
func TestHTTPTokenCookieFlow(t *testing.T) {
	srv := natstest.RunServer(t)
	dir := t.TempDir()
	_, base := startOpen(t, srv, dir)
	tok := readToken(t, dir)
	c := httpClient(t, false)

	resp, _ := do(t, c, base+"/agent/a1?x=1&token=nope", "")
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong ?token=: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	resp, _ = do(t, c, base+"/agent/a1?x=1&token="+tok, "")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/agent/a1?x=1" {
		t.Fatalf("?token=: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	cs := resp.Cookies()
	if len(cs) != 1 || cs[0].Name != HTTPTokenCookie || !cs[0].HttpOnly || cs[0].SameSite != http.SameSiteStrictMode ||
		cs[0].Path != "/" || cs[0].Value == tok || strings.Contains(cs[0].Value, tok) {
		t.Fatalf("cookie: %+v", cs)
	}
	cookie := HTTPTokenCookie + "=" + cs[0].Value
	for path, ctype := range guarded {
		resp, _ := do(t, c, base+path, "", "Cookie", cookie)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) {
			t.Errorf("%s with the cookie: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	// A browser (a cookie jar that follows the redirect) lands on the page.
	b := httpClient(t, true)
	resp, body := do(t, b, base+"/?token="+tok, "")
	if resp.StatusCode != http.StatusOK || resp.Request.URL.RawQuery != "" || !strings.Contains(body, "/static/fleet.js") {
		t.Fatalf("browser: %d at %s", resp.StatusCode, resp.Request.URL)
	}
	if resp, _ := do(t, b, base+"/events", ""); resp.StatusCode != http.StatusOK {
		t.Errorf("browser /events: %d", resp.StatusCode)
	}
	// Redirects never leave the origin.
	resp, _ = do(t, c, base+"//evil.example/?token="+tok, "")
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/" {
		t.Errorf("//evil.example: %d Location %q", resp.StatusCode, loc)
	}
}

// The token file is made 0600 in a 0700 directory and a restart with the
// same data dir reuses it.
func TestHTTPTokenFilePersists(t *testing.T) {
	srv := natstest.RunServer(t)
	dir := t.TempDir()
	s, _ := startOpen(t, srv, dir)
	tok := readToken(t, dir)
	if len(tok) != 2*httpTokenBytes || strings.Trim(tok, "0123456789abcdef") != "" {
		t.Errorf("token %d characters, want %d hex", len(tok), 2*httpTokenBytes)
	}
	for path, want := range map[string]os.FileMode{filepath.Join(dir, "auth"): 0o700, filepath.Join(dir, "auth", HTTPTokenFileName): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	s.Close()
	_, base := startOpen(t, srv, dir)
	if again := readToken(t, dir); again != tok {
		t.Fatal("a restart changed the token")
	}
	if resp, _ := do(t, httpClient(t, false), base+"/api/fleet", "", "Authorization", "Bearer "+tok); resp.StatusCode != http.StatusOK {
		t.Errorf("old token after a restart: %d", resp.StatusCode)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "auth"))
	if len(entries) != 1 {
		t.Errorf("auth dir holds %d files, want only the token", len(entries))
	}
}

// A token file given by hand is used as is; a short one is refused at Start.
func TestHTTPTokenFileGiven(t *testing.T) {
	srv := natstest.RunServer(t)
	file := filepath.Join(t.TempDir(), "tok")
	mine := strings.Repeat("k", 40)
	if err := os.WriteFile(file, []byte(mine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, srv)
	cfg.HTTPAddr, cfg.HTTPTokenFile, cfg.DataDir = "0.0.0.0:0", file, ""
	s := startSupervisor(t, cfg)
	_, port, _ := net.SplitHostPort(s.HTTPAddr())
	if resp, _ := do(t, httpClient(t, false), "http://127.0.0.1:"+port+"/api/fleet", "", "Authorization", "Bearer "+mine); resp.StatusCode != http.StatusOK {
		t.Errorf("given token: %d", resp.StatusCode)
	}
	s.Close()
	if err := os.WriteFile(file, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(t.Context(), cfg); !errors.Is(err, errHTTPToken) || !strings.Contains(err.Error(), file) {
		t.Errorf("short token file: %v", err)
	}
}

// Concurrent first starts sharing a data dir agree on one token.
func TestLoadHTTPTokenConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "auth", HTTPTokenFileName)
	toks := make([]string, 8)
	var wg sync.WaitGroup
	for i := range toks {
		wg.Go(func() {
			tok, _, err := loadHTTPToken(path)
			if err != nil {
				t.Error(err)
			}
			toks[i] = tok
		})
	}
	wg.Wait()
	for _, tok := range toks {
		if tok != toks[0] || tok == "" {
			t.Fatalf("tokens differ: %q", toks)
		}
	}
}

// A Host that is not the listen address's (DNS rebinding) is refused with
// 421 on loopback and non-loopback listens alike; /healthz and /readyz
// answer any Host.
func TestHTTPHostCheck(t *testing.T) {
	srv := natstest.RunServer(t)
	hostname, _ := os.Hostname()
	c := httpClient(t, false)

	s := startSupervisor(t, testConfig(t, srv)) // 127.0.0.1:0, no token
	_, port, _ := net.SplitHostPort(s.HTTPAddr())
	base := "http://127.0.0.1:" + port
	for host, ok := range map[string]bool{
		"127.0.0.1:" + port: true, "localhost:" + port: true, "LOCALHOST.:" + port: true, "[::1]:" + port: true,
		"evil.example:" + port: false, "evil.example": false, "127.0.0.1:1": false, "localhost": port == "80",
		"127.0.0.1.evil.example:" + port: false, "": false,
	} {
		for _, path := range []string{"/", "/api/fleet", "/metrics"} {
			resp, body := do(t, c, base+path, host)
			if host == "" {
				resp, body = rawGet(t, base, path)
			}
			if ok && resp.StatusCode != http.StatusOK {
				t.Errorf("loopback, Host %q %s: %d %s", host, path, resp.StatusCode, body)
			}
			if !ok && (resp.StatusCode != http.StatusMisdirectedRequest || !strings.Contains(body, "--http-allowed-hosts")) {
				t.Errorf("loopback, Host %q %s: %d %s, want 421", host, path, resp.StatusCode, body)
			}
		}
	}
	assertProbesOpen(t, c, base, "evil.example")

	dir := t.TempDir()
	_, base = startOpen(t, srv, dir)
	_, port, _ = net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	auth := []string{"Authorization", "Bearer " + readToken(t, dir)}
	for host, ok := range map[string]bool{
		"127.0.0.1:" + port: true, "localhost:9999": true, hostname + ":" + port: true, hostname: true,
		"10.1.2.3:" + port:     true, // an IP literal: the user typed it, no name to rebind
		"evil.example:" + port: false, "evil.example": false, hostname + ".evil.example": false,
	} {
		resp, body := do(t, c, base+"/api/fleet", host, auth...)
		if ok != (resp.StatusCode == http.StatusOK) || (!ok && resp.StatusCode != http.StatusMisdirectedRequest) {
			t.Errorf("all interfaces, Host %q: %d %s", host, resp.StatusCode, body)
		}
	}
	// A wrong Host is refused before the token is looked at.
	if resp, _ := do(t, c, base+"/api/fleet", "evil.example"); resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("wrong Host, no token: %d", resp.StatusCode)
	}
}

// rawGet sends an HTTP/1.0 request without a Host header.
func rawGet(t *testing.T, base, path string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := strings.Cut(string(b), "\r\n\r\n")
	code := http.StatusOK
	if !strings.HasPrefix(string(b), "HTTP/1.0 200") && !strings.HasPrefix(string(b), "HTTP/1.1 200") {
		code = http.StatusMisdirectedRequest
		if !strings.Contains(string(b), " 421 ") {
			code = 0
		}
	}
	return &http.Response{StatusCode: code}, body
}

func TestIsLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "LocalHost.": true, "127.0.0.1": true, "127.8.9.10": true, "::1": true, "::ffff:127.0.0.1": true,
		"": false, "0.0.0.0": false, "::": false, "10.0.0.1": false, "localhost.evil.example": false, "myhost": false,
	} {
		if got := isLoopbackHost(host); got != want {
			t.Errorf("isLoopbackHost(%q) = %v", host, got)
		}
	}
}

func TestAllowedHosts(t *testing.T) {
	for _, tc := range []struct {
		listen string
		extra  []string
		ok     []string
		no     []string
	}{
		{"127.0.0.1:8080", nil, []string{"127.0.0.1:8080", "localhost:8080", "[::1]:8080", "[0:0:0:0:0:0:0:1]:8080"},
			[]string{"localhost:8081", "box:8080", "10.0.0.1:8080", "localhost"}},
		{"127.0.0.1:80", nil, []string{"localhost", "127.0.0.1"}, []string{"box"}},
		{"127.0.0.1:8080", []string{"tunnel.local:9000"}, []string{"tunnel.local:9000", "localhost:8080"}, []string{"tunnel.local:9001"}},
		{"0.0.0.0:8080", nil, []string{"box:8080", "BOX", "localhost:1234", "10.0.0.7:8080", "[fe80::1]:8080"},
			[]string{"evil.example", "box.evil.example:8080", "localhost.evil.example"}},
		{"[::]:8080", nil, []string{"box", "192.168.1.2"}, []string{"evil.example"}},
		{"10.0.0.7:8080", nil, []string{"10.0.0.7:8080", "box", "127.0.0.1:8080"}, []string{"10.0.0.8:8080", "evil.example"}},
		{"0.0.0.0:8080", []string{"tether.example.com", "10.9.9.9:443"}, []string{"tether.example.com:8080", "10.9.9.9:443", "localhost"},
			[]string{"box", "10.0.0.7", "10.9.9.9:8080"}},
	} {
		rules, err := allowedHosts(tc.listen, tc.extra, "Box")
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range tc.ok {
			if !hostAllowed(rules, h) {
				t.Errorf("listen %s %v: Host %q refused", tc.listen, tc.extra, h)
			}
		}
		for _, h := range tc.no {
			if hostAllowed(rules, h) {
				t.Errorf("listen %s %v: Host %q accepted", tc.listen, tc.extra, h)
			}
		}
	}
}

func TestConfigValidateHTTPAuth(t *testing.T) {
	for name, mut := range map[string]func(*Config){
		"bad allowed host": func(c *Config) { c.HTTPAllowedHosts = []string{"http://x/"} },
		"wildcard host":    func(c *Config) { c.HTTPAllowedHosts = []string{"*.example.com"} },
		"bad port":         func(c *Config) { c.HTTPAllowedHosts = []string{"x:y"} },
		"no token file":    func(c *Config) { c.NATSURL, c.DataDir, c.HTTPAddr = "nats://x:4222", "", "0.0.0.0:8080" },
	} {
		c := DefaultConfig()
		mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "HTTP") {
			t.Errorf("%s: %v", name, err)
		}
	}
	c := DefaultConfig()
	c.NATSURL, c.DataDir, c.HTTPAddr = "nats://x:4222", "", "127.0.0.1:8080" // loopback: no token file needed
	c.HTTPAllowedHosts = []string{"tether.example.com", "[::1]:9000", "10.0.0.1"}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
}

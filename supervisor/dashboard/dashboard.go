package dashboard

import (
	"embed"
	"errors"
	"io/fs"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	"github.com/tether-dev/tether/kvconfig"
)

// Defaults of the live fleet dashboard.
const (
	// DefaultInterval is how often the dashboard samples the fleet
	// (state changes, latency) and pushes an update to open pages. With a
	// heartbeat faster than 2 s it samples every half heartbeat instead.
	DefaultInterval = time.Second
	// DefaultEvents bounds the ring of recent state changes.
	DefaultEvents = 1000
	// DefaultSamples bounds the ring of latency samples (10 min at
	// the default interval).
	DefaultSamples = 600
	// DefaultRateWindow is how far back the table's recent failures (calls
	// retried and failed, reconnects) look, at the default interval; with
	// a shorter interval it shrinks with it (300 samples).
	DefaultRateWindow = 5 * time.Minute
	// minInterval bounds the sampling rate under test timings.
	minInterval = 10 * time.Millisecond
)

//go:embed web
var webFS embed.FS

// Config sets the dashboard's recorder.
type Config struct {
	// Interval between samples; also the fastest an open page updates.
	Interval time.Duration
	// MaxEvents and MaxSamples bound the rings of state changes and
	// latency samples.
	MaxEvents, MaxSamples int
	// RateWindow is how far back recent failures look: the increase of
	// each agent's cumulative counters between the samples at both ends.
	// Zero means DefaultRateWindow.
	RateWindow time.Duration
}

// ConfigFor derives the dashboard settings from the fleet's heartbeat
// interval: DefaultInterval, or half a heartbeat when that is shorter, so
// millisecond test timings get a millisecond dashboard; the rate window
// shrinks in step.
func ConfigFor(heartbeat time.Duration) Config {
	iv := DefaultInterval
	if h := heartbeat / 2; h > 0 && h < iv {
		iv = max(h, minInterval)
	}
	return Config{Interval: iv, MaxEvents: DefaultEvents, MaxSamples: DefaultSamples,
		RateWindow: DefaultRateWindow / DefaultInterval * iv}
}

// Dashboard serves the live fleet dashboard: static pages, JSON endpoints
// and a server-sent event stream fed by its recorder. Close stops the
// recorder and every open stream and waits for them; safe to call twice.
type Dashboard struct {
	rec   *recorder
	src   Source
	index func() *kvconfig.Index
	log   zerolog.Logger
	web   fs.FS
	agent agentPage

	mu      sync.Mutex
	closed  bool
	done    chan struct{} // closed when streams must end
	streams sync.WaitGroup
	active  atomic.Int32 // open streams
}

// New returns a dashboard over src, resolving explanations against the
// index index returns (nil while there is none). Start starts sampling;
// Routes mounts it on a mux.
func New(cfg Config, src Source, index func() *kvconfig.Index, log zerolog.Logger) *Dashboard {
	sub, err := fs.Sub(webFS, "web")
	if err != nil {
		panic(err) // the embedded directory is part of the binary
	}
	return &Dashboard{rec: newRecorder(cfg, src), src: src, index: index, log: log, web: sub, agent: loadAgentPage(sub), done: make(chan struct{})}
}

// start starts the recorder's sampling loop.
func (d *Dashboard) Start() { d.rec.start() }

// stopStreams tells every open event stream to end (for http.Server's
// Shutdown, which otherwise waits for them forever). It does not wait.
func (d *Dashboard) StopStreams() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.closed = true
		close(d.done)
	}
}

// Close ends every stream and the recorder and waits for them.
func (d *Dashboard) Close() {
	d.StopStreams()
	d.streams.Wait()
	d.rec.Close()
}

// enter registers a stream; false once the dashboard is closing.
func (d *Dashboard) enter() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.streams.Add(1)
	d.active.Add(1)
	return true
}

// leave unregisters a stream.
func (d *Dashboard) leave() {
	d.active.Add(-1)
	d.streams.Done()
}

// routes mounts the dashboard on mux.
func (d *Dashboard) Routes(mux *http.ServeMux) {
	page := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { d.serveFile(w, r, name) }
	}
	mux.HandleFunc("GET /{$}", page("index.html"))
	mux.HandleFunc("GET /agent/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := kvconfig.ValidateID(kvconfig.KindAgent, id); err != nil {
			secure(w)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		d.serveAgentPage(w, r, id)
	})
	mux.HandleFunc("GET /static/{file}", func(w http.ResponseWriter, r *http.Request) {
		d.serveFile(w, r, r.PathValue("file"))
	})
	mux.HandleFunc("GET /api/fleet", d.serveFleet)
	mux.HandleFunc("GET /api/timeline", d.serveTimeline)
	mux.HandleFunc("GET /api/agent/{id}", d.serveAgent)
	mux.HandleFunc("GET /events", d.serveEvents)
}

var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".svg":  "image/svg+xml",
}

// serveFile serves one embedded file by name (no directories, no listing).
func (d *Dashboard) serveFile(w http.ResponseWriter, r *http.Request, name string) {
	secure(w)
	ext := ""
	for i := len(name) - 1; i >= 0; i-- {
		if name[i] == '.' {
			ext = name[i:]
			break
		}
	}
	ct, ok := contentTypes[ext]
	body, err := fs.ReadFile(d.web, name)
	if !ok || err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// secure sets the headers every dashboard response carries: no inline or
// third-party script can run, the page cannot be framed, and nothing is
// sniffed into another type.
func secure(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
}

// apiError writes the contract's error body {"error":{code,message,retryable}}.
func apiError(w http.ResponseWriter, status int, err error) {
	secure(w)
	writeJSON(w, status, agentproto.ErrorBody{Error: agentproto.ErrorDetail{
		Code: agentproto.ErrorName(status), Status: status, Message: err.Error(), Retryable: status == http.StatusServiceUnavailable}})
}

// errClosing is returned to streams opened while the supervisor shuts down.
var errClosing = errors.New("dashboard: shutting down")

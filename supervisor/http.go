package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/tether-dev/tether/supervisor/dashboard"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func (s *Supervisor) startHTTP() error {
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("supervisor: HTTP listen on %s (try --http with another port): %w", s.cfg.HTTPAddr, err)
	}
	s.httpAddr = ln.Addr().String()
	dash := dashboard.New(dashboard.ConfigFor(s.cfg.Fleet.HeartbeatInterval), dashboard.FromFleet(s.Fleet), s.Index,
		s.log.With().Str("component", "dashboard").Logger())
	guard, err := newHTTPGuard(&s.cfg, s.httpAddr, s.httpHandler(dash), s.httpSampler.Logger(s.log.With().Str("component", "http").Logger()))
	if err != nil {
		_ = ln.Close()
		s.httpAddr = ""
		return err
	}
	s.http = &http.Server{Handler: guard, ReadHeaderTimeout: 5 * time.Second}
	// Shutdown waits for idle connections: event streams must end first.
	s.http.RegisterOnShutdown(dash.StopStreams)
	dash.Start()
	s.httpWG.Add(1)
	go func() {
		defer s.httpWG.Done()
		// Close and Shutdown end Serve; the dashboard's recorder and
		// streams are then stopped and waited for, before Close returns.
		defer dash.Close()
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("http server stopped")
		}
	}()
	ev := s.log.Info().Str("addr", ln.Addr().String())
	if guard.token != nil {
		ev = ev.Str("auth", "bearer token").Str("token_file", guard.tokenFile)
	} else {
		ev = ev.Str("auth", "none (loopback)")
	}
	ev.Msg("http listening")
	return nil
}

// HTTPAddr is the address the HTTP server listens on ("" when disabled).
func (s *Supervisor) HTTPAddr() string {
	return s.httpAddr
}

func (s *Supervisor) httpHandler(dash *dashboard.Dashboard) http.Handler {
	mux := http.NewServeMux()
	dash.Routes(mux) // /, /agent/{id}, /static/, /api/…, /events
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := s.Ready()
		code := http.StatusOK
		if !ok {
			code = http.StatusServiceUnavailable
		}
		// Followers are ready too: they resolve and track; "leader" only
		// says which replica commands.
		writeJSON(w, code, map[string]any{"ready": ok, "reason": why, "leader": s.IsLeader(), "replica": s.cfg.ReplicaID})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-dev/tether/internal/cli"
)

func TestRun(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, `{"ready":false,"reason":"nats not connected"}`, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte(`{"ready":true}`))
	}))
	defer srv.Close()
	check := func(want int, wantOut string, args ...string) {
		t.Helper()
		var out, errb strings.Builder
		if got := run(context.Background(), args, &out, &errb); got != want || !strings.Contains(out.String()+errb.String(), wantOut) {
			t.Errorf("healthcheck %q: exit %d, want %d; output %q, want it to contain %q", args, got, want, out.String()+errb.String(), wantOut)
		}
	}
	check(0, "200 OK", srv.URL+"/readyz")
	ready.Store(false)
	check(1, "503 Service Unavailable {\"ready\":false,\"reason\":\"nats not connected\"}", srv.URL+"/readyz")

	// Nothing listens: not up.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	check(1, "connection refused", "http://"+addr+"/readyz")

	// Accepts but never answers: the timeout ends it.
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	start := time.Now()
	check(1, "deadline exceeded", "--timeout", "200ms", "http://"+ln.Addr().String()+"/readyz")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("--timeout 200ms took %v", d)
	}
	check(2, "want one URL")
	check(2, "want one URL", "a", "b")
}

func TestHelpSaysWhatItIs(t *testing.T) {
	var out, errb strings.Builder
	if code := run(context.Background(), []string{"--help"}, &out, &errb); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	if err := cli.CheckHelp(errb.String(), "healthcheck"); err != nil {
		t.Error(err)
	}
}

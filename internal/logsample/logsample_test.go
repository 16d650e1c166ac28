package logsample

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// A sampler passes exactly burst lines per period, counts the rest, and
// its report names the count once.
func TestSamplerBurstPerPeriodAndReport(t *testing.T) {
	s := New("test", 3, time.Second)
	var now int64
	s.now = func() int64 { return now }
	var buf bytes.Buffer
	log := s.Logger(zerolog.New(&buf))
	for range 10 {
		log.Warn().Msg("x")
	}
	now += int64(time.Second)
	for range 10 {
		log.Error().Msg("x")
	}
	if n := strings.Count(buf.String(), "\n"); n != 6 {
		t.Fatalf("%d lines through, want 3 per period x 2", n)
	}
	if d := s.Dropped(); d != 14 {
		t.Fatalf("dropped %d, want 14", d)
	}
	var rep bytes.Buffer
	s.Report(zerolog.New(&rep), 2*time.Second)
	s.Report(zerolog.New(&rep), 2*time.Second) // nothing new: no line
	if got := rep.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, `"dropped":14`) || !strings.Contains(got, `"lines":"test"`) {
		t.Fatalf("report %q", got)
	}
}

// The reporter reports at Close and its goroutine ends.
func TestReporterReportsAtClose(t *testing.T) {
	s := New("r", 0, time.Hour)
	s.Sample(zerolog.InfoLevel)
	var buf lockedBuf
	r := Start(zerolog.New(&buf), time.Hour, s)
	r.Close()
	r.Close()
	if !strings.Contains(buf.String(), `"dropped":1`) {
		t.Fatalf("no report at close: %q", buf.String())
	}
}

package agentproto

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// benchOp is called through a variable so the compiler cannot inline the
// bare call away.
var benchOp = func(context.Context) error { return nil }

var benchValueOp = func(context.Context) (int, error) { return 42, nil }

var sinkErr error

// BenchmarkBareCall is the reference: the op called directly.
func BenchmarkBareCall(b *testing.B) {
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		sinkErr = benchOp(ctx)
	}
}

// BenchmarkRetrySuccess is a first-attempt success wrapped in Retry with
// DefaultPolicy: the overhead every successful call pays.
func BenchmarkRetrySuccess(b *testing.B) {
	ctx := context.Background()
	p := DefaultPolicy()
	p.Op = "search"
	b.ReportAllocs()
	for b.Loop() {
		sinkErr = Retry(ctx, p, benchOp)
	}
}

// BenchmarkRetrySuccessStats adds the CallStats counter.
func BenchmarkRetrySuccessStats(b *testing.B) {
	ctx := context.Background()
	p := DefaultPolicy()
	p.Stats = new(CallStats)
	b.ReportAllocs()
	for b.Loop() {
		sinkErr = Retry(ctx, p, benchOp)
	}
}

// BenchmarkRetrySuccessClosure wraps a closure that captures a variable,
// as real callers do.
func BenchmarkRetrySuccessClosure(b *testing.B) {
	ctx := context.Background()
	p := DefaultPolicy()
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		sinkErr = Retry(ctx, p, func(ctx context.Context) error { n++; return benchOp(ctx) })
	}
}

// BenchmarkRetryValueSuccess is RetryValue's first-attempt success.
func BenchmarkRetryValueSuccess(b *testing.B) {
	ctx := context.Background()
	p := DefaultPolicy()
	b.ReportAllocs()
	for b.Loop() {
		_, sinkErr = RetryValue(ctx, p, benchValueOp)
	}
}

// BenchmarkRetryAttemptTimeout: a per-attempt deadline costs a context and
// a timer per call.
func BenchmarkRetryAttemptTimeout(b *testing.B) {
	ctx := context.Background()
	p := DefaultPolicy()
	p.AttemptTimeout = time.Second
	b.ReportAllocs()
	for b.Loop() {
		sinkErr = Retry(ctx, p, benchOp)
	}
}

// BenchmarkRetryOneRetry is the slow path: one transient failure, a zero
// wait (injected), then success.
func BenchmarkRetryOneRetry(b *testing.B) {
	ctx := context.Background()
	p := DefaultPolicy()
	p.Sleep = func(context.Context, time.Duration) error { return nil }
	fail := &HTTPError{Status: 503}
	b.ReportAllocs()
	for b.Loop() {
		first := true
		sinkErr = Retry(ctx, p, func(context.Context) error {
			if first {
				first = false
				return fail
			}
			return nil
		})
	}
}

// BenchmarkClassify is the table walk for an error near its end.
func BenchmarkClassify(b *testing.B) {
	err := fmt.Errorf("read: %w", errors.New("odd"))
	b.ReportAllocs()
	for b.Loop() {
		_ = Classify(err)
	}
}

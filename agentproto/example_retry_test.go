package agentproto_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/tether-dev/tether/agentproto"
)

// Wrap any call an agent makes: transient errors are retried with backoff,
// and the counters go into the heartbeat.
func ExampleRetry() {
	var stats agentproto.CallStats
	p := agentproto.DefaultPolicy()
	p.Op = "search"
	p.Logger = zerolog.Nop() // the agent's logger: one line per retry
	p.Stats = &stats
	p.BaseDelay = time.Millisecond // shortened for the example

	calls := 0
	err := agentproto.Retry(context.Background(), p, func(ctx context.Context) error {
		calls++
		if calls < 3 {
			return nats.ErrNoResponders // the supervisor is restarting
		}
		return nil
	})
	fmt.Println(err, calls)
	b, _ := json.Marshal(stats.Snapshot())
	fmt.Println(string(b))
	// Output:
	// <nil> 3
	// {"ok":1,"retried":2,"failed":0,"unknown":0,"last_error_class":"transient"}
}

// A permanent error fails at once, and the error says how the call ended.
func ExampleRetry_permanent() {
	p := agentproto.DefaultPolicy()
	p.Op = "resolve"
	p.Now = func() time.Time { return time.Time{} } // a frozen clock, for a stable message
	err := agentproto.Retry(context.Background(), p, func(ctx context.Context) error {
		return &agentproto.ServiceError{Subject: "mcp.v1.resolve.a7.github", Code: agentproto.CodeNotFound, Message: "no config"}
	})
	fmt.Println(err)
	var se *agentproto.ServiceError
	fmt.Println(errors.As(err, &se), se.Code)
	// Output:
	// agentproto: resolve: permanent error after 1 attempt in 0s: agentproto: mcp.v1.resolve.a7.github: 404 not_found: no config
	// true 404
}

func ExampleRetryValue() {
	p := agentproto.DefaultPolicy()
	p.BaseDelay = time.Millisecond // shortened for the example
	calls := 0
	v, err := agentproto.RetryValue(context.Background(), p, func(ctx context.Context) (string, error) {
		calls++
		if calls == 1 {
			return "", &agentproto.HTTPError{Status: 502}
		}
		return "42 results", nil
	})
	fmt.Println(v, err)
	// Output: 42 results <nil>
}

// Map a server config's "retry" block to a Policy.
func ExampleNewPolicy() {
	// "retry": {"max_attempts": 3, "base_delay": "200ms", "max_delay": "5s", "jitter": 0.2}
	p, err := agentproto.NewPolicy(3, 200*time.Millisecond, 5*time.Second, 0.2)
	fmt.Println(p.MaxAttempts, p.BaseDelay, p.MaxDelay, p.Jitter, p.JitterMode, err)

	_, err = agentproto.NewPolicy(3, 0, 0, 1.5)
	fmt.Println(err)
	// Output:
	// 3 200ms 5s 0.2 additive <nil>
	// agentproto: invalid config: retry policy: jitter 1.5 must be in [0, 1]
}

func ExampleClassify() {
	for _, err := range []error{
		nats.ErrNoResponders,
		&agentproto.HTTPError{Status: 429},
		&agentproto.HTTPError{Status: 403},
		&agentproto.ServiceError{Subject: "mcp.v1.resolve.a7.github", Code: agentproto.CodeInvalidConfig, Message: "bad"},
		context.Canceled,
		errors.New("something new"),
	} {
		fmt.Printf("%s: %v\n", agentproto.Classify(err), err)
	}
	// Output:
	// transient: nats: no responders available for request
	// transient: agentproto: HTTP 429 Too Many Requests
	// permanent: agentproto: HTTP 403 Forbidden
	// permanent: agentproto: mcp.v1.resolve.a7.github: 422 invalid_config: bad
	// permanent: context canceled
	// unknown: something new
}

// A tool wrapper knows what its own errors mean; it marks them.
func ExampleMarkPermanent() {
	callTool := func(ctx context.Context) error {
		// A tool result with IsError set is not a Go error; say what it is.
		return agentproto.MarkPermanent(errors.New("tool search: query must not be empty"))
	}
	err := agentproto.Retry(context.Background(), agentproto.DefaultPolicy(), callTool)
	fmt.Println(agentproto.Classify(err))
	// Output: permanent
}

func ExampleParseRetryAfter() {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, v := range []string{"120", "Sun, 01 Mar 2026 12:00:30 GMT", "soon"} {
		d, ok := agentproto.ParseRetryAfter(v, now)
		fmt.Println(d, ok)
	}
	// Output:
	// 2m0s true
	// 30s true
	// 0s false
}

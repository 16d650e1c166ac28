package demoagent

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/agentproto"
	agentmcp "github.com/tether-dev/tether/agentproto/mcp"
)

// consumeTasks consumes the durable of spec (STREAM:DURABLE, as 'tetherctl
// agent add --consumer' grants it): each task is handled by calling the
// tool with the task's text, one at a time; a failed call naks the task
// for redelivery, an empty task is terminated.
func consumeTasks(client *agentproto.Client, caller *agentmcp.ToolCaller, spec, tool string, log zerolog.Logger) (*agentproto.Consumer, error) {
	stream, durable, ok := strings.Cut(spec, ":")
	if !ok {
		return nil, fmt.Errorf("demoagent: --tasks %q: want STREAM:DURABLE, e.g. TASKS_demo-1:demo-1", spec)
	}
	handle := func(ctx context.Context, t *agentproto.Task) error {
		text := strings.TrimSpace(string(t.Data))
		if text == "" {
			return agentproto.MarkPermanent(fmt.Errorf("demoagent: task %d is empty", t.StreamSeq))
		}
		start := time.Now()
		res, err := caller.Call(ctx, tool, map[string]any{"text": text})
		switch {
		case err != nil:
			return fmt.Errorf("demoagent: task %d: %w", t.StreamSeq, err)
		case res.IsError:
			return fmt.Errorf("demoagent: task %d: the tool reported an error", t.StreamSeq)
		}
		log.Info().Uint64("stream_seq", t.StreamSeq).Uint64("delivered", t.Delivered).Uint64("pending", t.Pending).
			Str("task", truncate(text, 80)).Int64("took_ms", time.Since(start).Milliseconds()).Msg("task done")
		return nil
	}
	k, err := client.Consume(stream, durable, handle, agentproto.WithMaxInFlight(1), agentproto.WithHandlerTimeout(time.Minute))
	if err != nil {
		return nil, err
	}
	log.Info().Str("stream", stream).Str("durable", durable).Msg("consuming tasks")
	return k, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

//go:build tools

// Package deps pins the modules the project depends on so that go mod tidy
// keeps them while the packages that use them are being written. It is never
// built.
package deps

import (
	_ "github.com/cenkalti/backoff/v5"
	_ "github.com/chromedp/chromedp"
	_ "github.com/modelcontextprotocol/go-sdk/mcp"
	_ "github.com/nats-io/nats-server/v2/server"
	_ "github.com/nats-io/nats.go"
	_ "github.com/nats-io/nats.go/jetstream"
	_ "github.com/nats-io/nats.go/micro"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/common/expfmt"
	_ "github.com/rs/zerolog"
	_ "go.uber.org/goleak"
	_ "gopkg.in/yaml.v3"
)

// Package cli holds what the commands share: environment defaults for flags
// and the zerolog setup (console on a terminal, JSON otherwise).
package cli

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// Env returns the environment variable's value, or def when it is unset.
func Env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// Logger builds the process logger. format is auto, console or json; auto
// picks console when w is a terminal.
func Logger(w io.Writer, level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Nop(), fmt.Errorf("--log-level %q: use trace, debug, info, warn or error", level)
	}
	console := false
	switch format {
	case "console":
		console = true
	case "json":
	case "auto", "":
		if f, ok := w.(*os.File); ok {
			console = isatty.IsTerminal(f.Fd())
		}
	default:
		return zerolog.Nop(), fmt.Errorf("--log-format %q: use auto, console or json", format)
	}
	if console {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

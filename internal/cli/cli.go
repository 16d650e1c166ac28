// Package cli holds what the commands share: environment defaults for flags
// and the zerolog setup (console on a terminal, JSON otherwise).
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
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

// EnvName is the TETHER_* variable of a flag: TETHER_ and the flag's name
// in upper case with - as _ (--heartbeat-interval: TETHER_HEARTBEAT_INTERVAL).
func EnvName(flagName string) string {
	return "TETHER_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// FlagsFromEnv gives every flag of fs whose usage does not already name its
// variable ("(env TETHER_...)") a default from EnvName, read with lookup,
// and adds the variable to its usage. Command-line flags parsed afterwards
// still win. A value the flag rejects is an error naming the variable.
func FlagsFromEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if strings.Contains(f.Usage, "(env ") {
			return
		}
		name := EnvName(f.Name)
		f.Usage += " (env " + name + ")"
		if v, ok := lookup(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: invalid value for --%s: %w", name, v, f.Name, err))
			}
		}
	})
	return errors.Join(errs...)
}

// Describe makes fs's -help print what the program is, then its usage
// line and every flag with its default.
func Describe(fs *flag.FlagSet, about, usage string) {
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "%s\n\nusage: %s\n\nflags:\n", strings.TrimSpace(about), usage)
		fs.PrintDefaults()
	}
}

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

// Describe makes fs's -help print what the program is (about: one
// paragraph), an example (one or more command lines), then its usage line
// and every flag with its default.
func Describe(fs *flag.FlagSet, about, example, usage string) {
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "%s\n\nexample:\n", strings.TrimSpace(about))
		for _, l := range strings.Split(strings.TrimSpace(example), "\n") {
			fmt.Fprintf(w, "  %s\n", strings.TrimSpace(l))
		}
		fmt.Fprintf(w, "\nusage: %s\n\nflags:\n", usage)
		fs.PrintDefaults()
	}
}

// CheckHelp reports whether help starts as every command's --help must: one
// paragraph that says what program is ("program: ..." or "program — ..."),
// a blank line, then "example:" and at least one indented command line
// that runs program (directly, or with go run ./cmd/program).
func CheckHelp(help, program string) error {
	paras := strings.SplitN(strings.TrimLeft(help, "\n"), "\n\n", 3)
	if len(paras) < 2 {
		return fmt.Errorf("cli: %s --help: want a paragraph, a blank line and an example; got %q", program, help)
	}
	about, example := paras[0], paras[1]
	if !strings.HasPrefix(about, program+": ") && !strings.HasPrefix(about, program+" — ") {
		return fmt.Errorf("cli: %s --help: the first paragraph must start with %q and say what it is; got %q", program, program+": ", about)
	}
	if len(strings.Fields(about)) < 8 {
		return fmt.Errorf("cli: %s --help: the first paragraph is too short to say what it is: %q", program, about)
	}
	lines := strings.Split(strings.TrimRight(example, "\n"), "\n")
	if lines[0] != "example:" || len(lines) < 2 {
		return fmt.Errorf("cli: %s --help: the second paragraph must be \"example:\" and command lines; got %q", program, example)
	}
	for _, l := range lines[1:] {
		cmd := strings.TrimSpace(l)
		if !strings.HasPrefix(l, "  ") || !(strings.HasPrefix(cmd, program+" ") || strings.HasPrefix(cmd, "go run ./cmd/"+program)) {
			return fmt.Errorf("cli: %s --help: example line %q must be indented and run %s", program, l, program)
		}
	}
	return nil
}

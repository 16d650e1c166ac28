package tetherctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of the global flags.
const (
	DefaultNATSURL = "nats://127.0.0.1:4222"
	DefaultTimeout = 5 * time.Second
)

// CLI is one invocation's environment. The zero value of each field is
// replaced by the process's own (os.Stdin, io.Discard, os.LookupEnv,
// time.Now), so tests can inject them.
type CLI struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// LookupEnv reads environment defaults of the global flags.
	LookupEnv func(string) (string, bool)
	// Now is the clock used for "ago" columns.
	Now func() time.Time
}

// Run runs tetherctl with args (without the program name), writing results
// to stdout and errors to stderr, and returns the exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return (&CLI{Stdout: stdout, Stderr: stderr}).Run(ctx, args)
}

// Run runs one command and returns its exit code (see ExitOK and others).
func (c *CLI) Run(ctx context.Context, args []string) int {
	c.defaults()
	a := &app{cli: c, out: c.Stdout}
	a.g.fromEnv(c.LookupEnv)
	err := a.run(ctx, args)
	if a.nc != nil {
		a.nc.Close()
	}
	if err != nil {
		fmt.Fprintln(c.Stderr, err)
	}
	return ExitCode(err)
}

func (c *CLI) defaults() {
	if c.Stdin == nil {
		c.Stdin = os.Stdin
	}
	if c.Stdout == nil {
		c.Stdout = io.Discard
	}
	if c.Stderr == nil {
		c.Stderr = io.Discard
	}
	if c.LookupEnv == nil {
		c.LookupEnv = os.LookupEnv
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// globals are the flags every command accepts, before or after its name.
type globals struct {
	url, creds, user, password, token, prefix, dataDir string
	timeout                                            time.Duration
	json, showSecrets                                  bool
}

func (g *globals) fromEnv(lookup func(string) (string, bool)) {
	env := func(name, def string) string {
		if v, ok := lookup(name); ok {
			return v
		}
		return def
	}
	g.url = env("TETHER_NATS_URL", DefaultNATSURL)
	g.creds = env("TETHER_NATS_CREDS", "")
	g.user = env("TETHER_NATS_USER", "")
	g.password = env("TETHER_NATS_PASSWORD", "")
	g.token = env("TETHER_NATS_TOKEN", "")
	g.prefix = env("TETHER_PREFIX", "mcp")
	g.dataDir = env("TETHER_DATA_DIR", DefaultDataDir)
	g.timeout = DefaultTimeout
	if d, err := time.ParseDuration(env("TETHER_TIMEOUT", "")); err == nil && d > 0 {
		g.timeout = d
	}
}

// register adds the global flags to fs, with the current values as
// defaults so a second FlagSet does not reset what the first parsed.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.url, "nats-url", g.url, "")
	fs.StringVar(&g.creds, "creds", g.creds, "")
	fs.StringVar(&g.user, "user", g.user, "")
	fs.StringVar(&g.password, "password", g.password, "")
	fs.StringVar(&g.token, "token", g.token, "")
	fs.StringVar(&g.prefix, "prefix", g.prefix, "")
	fs.StringVar(&g.dataDir, "data-dir", g.dataDir, "")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "")
	fs.BoolVar(&g.json, "json", g.json, "")
	fs.BoolVar(&g.showSecrets, "show-secrets", g.showSecrets, "")
}

// app is one run: the parsed flags and the connection, opened on demand.
type app struct {
	cli *CLI
	out io.Writer
	g   globals
	f   cmdFlags

	nc *nats.Conn
	js jetstream.JetStream
}

// cmdFlags are the flags of individual commands.
type cmdFlags struct {
	revision        optUint       // put --revision
	scope           string        // import --scope
	dryRun          bool          // import --dry-run
	dropUnsupported bool          // import --drop-unsupported
	state, role     string        // fleet
	agent           string        // fleet --agent
	limit           int           // fleet --limit
	out             string        // agent add --out
	consumers       consumerFlags // agent add --consumer (repeatable)
	resolverDir     string        // auth --resolver-dir
}

// optUint is a uint64 flag that remembers whether it was given.
type optUint struct {
	v   uint64
	set bool
}

func (o *optUint) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.FormatUint(o.v, 10)
}

func (o *optUint) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return errors.New("want a revision number such as 7 (0: the key must not exist)")
	}
	o.v, o.set = v, true
	return nil
}

func (a *app) run(ctx context.Context, args []string) error {
	fs := newFlagSet("tetherctl")
	a.g.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(a.out, mainHelp)
			return nil
		}
		return usageErr(nil, "%v", err)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usageErr(nil, "no command given")
	}
	if rest[0] == "help" {
		return a.help(rest[1:])
	}
	cmd := lookup(rest[0])
	if cmd == nil {
		return usageErr(nil, "unknown command %q", rest[0])
	}
	fs = newFlagSet(cmd.name)
	a.g.register(fs)
	if cmd.flags != nil {
		cmd.flags(fs, &a.f)
	}
	pos, err := parseInterleaved(fs, rest[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(a.out, cmd.help())
		return nil
	}
	if err != nil {
		return usageErr(cmd, "%v", err)
	}
	if len(pos) < cmd.minArgs || (cmd.maxArgs >= 0 && len(pos) > cmd.maxArgs) {
		return usageErr(cmd, "%s takes %s, got %d argument(s)", cmd.name, cmd.args, len(pos))
	}
	if err := a.checkGlobals(); err != nil {
		return err
	}
	return cmd.run(a, ctx, pos)
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseInterleaved parses flags that may come before, between or after the
// positional arguments; "--" ends the flags.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func (a *app) checkGlobals() error {
	if a.g.timeout <= 0 {
		return usageErr(nil, "--timeout %v must be positive, e.g. 5s", a.g.timeout)
	}
	if err := validPrefix(a.g.prefix); err != nil {
		return err
	}
	kinds := 0
	for _, set := range []bool{a.g.creds != "", a.g.user != "" || a.g.password != "", a.g.token != ""} {
		if set {
			kinds++
		}
	}
	if kinds > 1 {
		return usageErr(nil, "give one kind of NATS credentials: --creds, or --user/--password, or --token (check the TETHER_NATS_* environment too)")
	}
	return nil
}

// usageErr is an ErrUsage error; with a command it says how to get its help.
func usageErr(cmd *command, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if cmd != nil {
		msg += "\nusage: tetherctl " + cmd.name + " " + cmd.args + "\nrun 'tetherctl help " + cmd.name + "' for details"
	} else {
		msg += "\nrun 'tetherctl help' for the commands"
	}
	return fail(ErrUsage, nil, "%s", msg)
}

func (a *app) help(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(a.out, mainHelp)
		return nil
	}
	cmd := lookup(args[0])
	if cmd == nil {
		return usageErr(nil, "no help for unknown command %q", args[0])
	}
	fmt.Fprint(a.out, cmd.help())
	return nil
}

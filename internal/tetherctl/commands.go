package tetherctl

import (
	"context"
	"flag"
	"strings"
)

// command is one subcommand: its arguments, flags, help and behaviour.
type command struct {
	name    string
	args    string // positional arguments as shown in usage
	minArgs int
	maxArgs int // -1: any number
	summary string
	example string // one command line, without "tetherctl "
	detail  string
	flags   func(*flag.FlagSet, *cmdFlags)
	run     func(*app, context.Context, []string) error
}

// help starts, as every command's --help does, with what the command is
// and an example, then its usage and details.
func (c *command) help() string {
	var b strings.Builder
	b.WriteString("tetherctl " + c.name + ": " + c.summary + "\n\nexample:\n  tetherctl " + c.example + "\n\n")
	b.WriteString("usage: tetherctl " + c.name + " " + c.args + "\n")
	if c.detail != "" {
		b.WriteString("\n" + c.detail + "\n")
	}
	b.WriteString("\nGlobal flags (see 'tetherctl help') may come before or after the command.\n")
	return b.String()
}

var commands []*command

func init() {
	commands = []*command{
		{name: "validate", args: "FILE...", minArgs: 1, maxArgs: -1, run: (*app).cmdValidate,
			summary: "Strictly decode and validate config values, as the supervisor will (- reads stdin).",
			example: "validate github.json claude_desktop_config.json",
			detail: "A FILE holding an mcpServers object is checked as 'import' would convert it.\n" +
				"Exit 3 lists every problem at once, one per line: the file, the field and what to fix."},
		{name: "get", args: "SCOPE SERVER", minArgs: 2, maxArgs: 2, run: (*app).cmdGet,
			summary: "Show the stored value of SCOPE's SERVER config, its revision and whether it is valid.",
			example: "get role:coder github",
			detail:  "SCOPE is global, role:<role> or agent:<agent>. Exit 4 when the key is absent or deleted."},
		{name: "put", args: "SCOPE SERVER FILE", minArgs: 3, maxArgs: 3, run: (*app).cmdPut, flags: putFlags,
			summary: "Validate FILE, then write it to SCOPE's SERVER key with compare-and-swap and read it back.",
			example: "put global github github.json",
			detail: "Without --revision the write expects the revision read just before it; with\n" +
				"--revision N it expects N (0: the key must not exist). If someone else wrote the key\n" +
				"in between, nothing is written and the exit code is 5: re-read with 'tetherctl get'.\n" +
				"  --revision N   expected current revision of the key"},
		{name: "import", args: "FILE --scope SCOPE", minArgs: 1, maxArgs: 1, run: (*app).cmdImport, flags: importFlags,
			summary: "Import an mcpServers file (Claude Desktop, Cursor, VS Code) as one key per server.",
			example: "import claude_desktop_config.json --scope role:coder --dry-run",
			detail: "Every entry is validated first; if any is invalid nothing is written (exit 3).\n" +
				"Each key is written with compare-and-swap against the revision read for the diff, and\n" +
				"the diff lists the fields exactly as they will be stored. A key holding the same config\n" +
				"(spelt differently: an inferred transport, key order) is unchanged and not written.\n" +
				"\"type\" maps to transport (stdio, http, sse; streamable-http is http); entries with\n" +
				"\"disabled\": true are skipped.\n" +
				"  --scope SCOPE        global, role:<role> or agent:<agent> (required)\n" +
				"  --dry-run            print the diff per key, write nothing\n" +
				"  --drop-unsupported   drop fields Tether does not support (envFile, cwd, ...) instead of failing"},
		{name: "history", args: "SCOPE SERVER", minArgs: 2, maxArgs: 2, run: (*app).cmdHistory,
			summary: "List the kept revisions of a config key: revision, operation, time and value.",
			example: "history global github",
			detail:  "An invalid revision's error is cut to keep the table narrow; --json has it in full."},
		{name: "rollback", args: "SCOPE SERVER REVISION", minArgs: 3, maxArgs: 3, run: (*app).cmdRollback,
			summary: "Write the value of an older REVISION back as a new revision (compare-and-swap).",
			example: "rollback global github 7",
			detail: "Refused when REVISION is a delete, is no longer kept in history (exit 4) or is itself\n" +
				"invalid (exit 3). The supervisor pushes the restored config to affected agents."},
		{name: "resolve", args: "AGENT SERVER", minArgs: 2, maxArgs: 2, run: (*app).cmdResolve,
			summary: "Ask the supervisor which config AGENT gets for SERVER: scope, key, revision, config.",
			example: "resolve a7 github",
			detail:  "Exit 4: no scope has the server; exit 3: the winning value is invalid."},
		{name: "explain", args: "AGENT SERVER", minArgs: 2, maxArgs: 2, run: (*app).cmdExplain,
			summary: "Ask the supervisor for every scope consulted: present, valid, revision, winner, shadowed.",
			example: "explain a7 github",
			detail:  "The exit code follows the outcome: 0 ok, 3 the winner is invalid, 4 no scope has it."},
		{name: "agent", args: "add ID --role ROLE [--consumer STREAM:DURABLE]... [--out FILE] | revoke ID | forget ID | release ID | list", minArgs: 1, maxArgs: 2, run: (*app).cmdAgent, flags: agentFlags,
			summary: "Issue, revoke and list agents' NATS credentials; forget a lost or gone agent; end a quarantine.",
			example: "agent add a7 --role coder",
			detail: "add signs a credential for agent ID with exactly its own permissions (the account\n" +
				"signing key in <data-dir>/auth/), writes it to FILE (default ID.creds, mode 0600) and\n" +
				"registers ID's role in mcp_agents. revoke ends every credential issued to ID: its live\n" +
				"connections are closed and cannot come back. forget drops a lost or gone agent from the\n" +
				"fleet now (deletes its mcp_fleet record; same as 'nats kv del mcp_fleet ID') instead of\n" +
				"after the supervisor's --forget-after. release ends ID's quarantine now (recovery commands\n" +
				"resume, its restart intensity counts afresh; it also ends on its own once the agent is\n" +
				"healthy for a whole --quarantine-period without needing recovery). list shows the agents\n" +
				"issued here.\n" +
				"  --role ROLE    the agent's role (add; required)\n" +
				"  --consumer STREAM:DURABLE  (add; repeatable) let it consume that existing durable pull\n" +
				"                 consumer: pull, info and ack of it only, nothing else of $JS (create the\n" +
				"                 stream and durable yourself: 'nats stream add', 'nats consumer add')\n" +
				"  --out FILE     where to write the credentials (add)\n" +
				"  --data-dir D   the supervisor's data directory (env TETHER_DATA_DIR, default ./data)"},
		{name: "auth", args: "[--resolver-dir DIR] [--out FILE]", minArgs: 0, maxArgs: 0, run: (*app).cmdAuth, flags: authFlags,
			summary: "Print the nats-server configuration that runs Tether's auth on your own NATS server or cluster.",
			example: "auth --resolver-dir /etc/nats/jwt --out nats-tether.conf",
			detail: "Uses (or creates) the operator material in --data-dir: the operator and account JWTs,\n" +
				"a full account resolver that keeps revocations, and how the supervisor, operators,\n" +
				"viewers and agents then connect.\n" +
				"  --resolver-dir DIR   where your server keeps account JWTs (default ./tether-jwt)\n" +
				"  --out FILE           write the configuration to FILE (mode 0600) instead of stdout"},
		{name: "fleet", args: "[--state S] [--role R] [--agent A] [--limit N]", minArgs: 0, maxArgs: 0, run: (*app).cmdFleet, flags: fleetFlags,
			summary: "List agents from the supervisor: state, role, last heard, RTT, config revisions applied/current.",
			example: "fleet --state zombie",
			detail: "  --state S   only agents in state S (" + strings.Join(fleetStates, ", ") + ")\n" +
				"  --role R    only agents with role R\n" +
				"  --agent A   only agent A\n" +
				"  --limit N   page size asked of the supervisor (0: its default); every page is fetched\n" +
				"The line under the table says how many agents are shown, with which filters, and counts\n" +
				"agents by state: \"fleet:\" is every agent; with --role or --agent, \"all with role R:\"\n" +
				"counts only those (--state narrows the table, never the counts).\n" +
				"Then one line per MCP server the agents call (fleet-wide): \"MCP server echo down for 2/2\n" +
				"agents\" when it fails for more than half of the live agents calling it (they are not\n" +
				"recovered for it), otherwise \"ok (n/m agents failing)\"; and a WARNING for each agent\n" +
				"failing a server that other agents reach (it is sent a reresolve of that server)."},
	}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func putFlags(fs *flag.FlagSet, f *cmdFlags) {
	fs.Var(&f.revision, "revision", "")
}

func importFlags(fs *flag.FlagSet, f *cmdFlags) {
	fs.StringVar(&f.scope, "scope", "", "")
	fs.BoolVar(&f.dryRun, "dry-run", false, "")
	fs.BoolVar(&f.dropUnsupported, "drop-unsupported", false, "")
}

func fleetFlags(fs *flag.FlagSet, f *cmdFlags) {
	fs.StringVar(&f.state, "state", "", "")
	fs.StringVar(&f.role, "role", "", "")
	fs.StringVar(&f.agent, "agent", "", "")
	fs.IntVar(&f.limit, "limit", 0, "")
}

const mainHelp = `tetherctl: the operator's tool for Tether. It validates, writes (compare-and-swap),
imports, rolls back and explains the MCP server configs in the KV bucket mcp_configs, asks the
supervisor what an agent resolves, lists the fleet, and issues and revokes agents' credentials.
It is a NATS client like any other: with the supervisor's embedded server, pass the operator's
credentials, ./data/auth/operator.creds.

example:
  tetherctl --creds ./data/auth/operator.creds put global github github.json

usage: tetherctl [global flags] COMMAND [flags] ARGS
       tetherctl help [COMMAND]

SCOPE is global, role:<role> or agent:<agent>. AGENT, ROLE and SERVER are
1-64 characters of A-Z a-z 0-9 _ -. FILE may be - for standard input.

Configs (KV bucket mcp_configs):
  validate FILE...                 strictly check config values (or mcpServers files)
  get SCOPE SERVER                 show a stored value and its revision
  put SCOPE SERVER FILE            validate, write with compare-and-swap, read back [--revision N]
  import FILE --scope SCOPE        import an mcpServers file, one key per server [--dry-run]
  history SCOPE SERVER             kept revisions with operation and time
  rollback SCOPE SERVER REVISION   write an old revision's value back as a new revision

Supervisor (requests on <prefix>.v1.*):
  resolve AGENT SERVER             the config AGENT gets: scope, key, revision, config
  explain AGENT SERVER             every scope consulted: present, valid, revision, winner, shadowed
  fleet [--state S] [--role R] [--agent A] [--limit N]
                                   agents: state, role, last heard, RTT, config revisions applied/current

Agents (the embedded server's credentials, in --data-dir):
  agent add ID --role ROLE [--consumer STREAM:DURABLE]...
                                   issue ID's credentials (ID.creds), register its role, let it consume those durables
  agent revoke ID                  end every credential of ID; its connections close
  agent forget ID                  drop a lost or gone agent from the fleet now (its mcp_fleet record)
  agent release ID                 end ID's quarantine now
  agent list                       agents issued here, with their roles
  auth                             nats-server configuration for Tether's auth on your own NATS

Global flags (before or after the command):
  --nats-url URL       NATS server URL(s), comma separated (env TETHER_NATS_URL, default nats://127.0.0.1:4222)
  --creds FILE         NATS .creds file (env TETHER_NATS_CREDS)
  --user U --password P  NATS user and password (env TETHER_NATS_USER, TETHER_NATS_PASSWORD)
  --token T            NATS token (env TETHER_NATS_TOKEN)
  --prefix P           subject prefix (env TETHER_PREFIX, default mcp)
  --data-dir D         the supervisor's data directory, for agent commands (env TETHER_DATA_DIR, default ./data)
  --timeout D          bound on each NATS operation (env TETHER_TIMEOUT, default 5s)
  --json               machine-readable output on stdout (secrets still masked)
  --show-secrets       show env and header values, args and URL secrets instead of ****

Exit codes:
  0  ok
  1  failure (anything not below)
  2  usage error: unknown command or flag, wrong arguments, invalid identifier or scope
  3  invalid config: a value fails strict validation (the message names the field)
  4  not found: no such key, revision, agent or server
  5  conflict: the key changed since it was read; nothing written — re-read and retry
  6  unavailable: NATS, JetStream or the supervisor did not answer — retry later

Errors go to standard error and say what was wrong and what to do.
`

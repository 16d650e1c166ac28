package tetherctl

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/tether-dev/tether/supervisor/auth"
)

func authFlags(fs *flag.FlagSet, f *cmdFlags) {
	fs.StringVar(&f.resolverDir, "resolver-dir", "./tether-jwt", "")
	fs.StringVar(&f.out, "out", "", "")
}

// cmdAuth prints the nats-server configuration that makes an operator's own
// server or cluster trust Tether's operator and accounts (creating the
// material in --data-dir if there is none yet), and how to connect each
// party.
func (a *app) cmdAuth(_ context.Context, _ []string) error {
	m, created, err := auth.EnsureKeep(a.g.dataDir, a.g.prefix)
	if err != nil {
		return fail(nil, err, "%v", err)
	}
	q := strconv.Quote
	w := io.Writer(a.out)
	var file *os.File
	if a.f.out != "" {
		if file, err = os.OpenFile(a.f.out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
			return fail(nil, err, "write %s: %v", a.f.out, err)
		}
		defer file.Close()
		w = file
	}
	if created {
		fmt.Fprintf(w, "# created the auth material in %s (keep it like a root password)\n", m.Dir)
	}
	fmt.Fprintf(w, `# Tether on your own NATS: NATS JWT operator mode.
# Add this to the configuration of your nats-server (every node of a cluster) and restart it.
# The full resolver keeps account updates (revocations from 'tetherctl agent revoke') in its dir.
operator: %s
system_account: %s
resolver: {
  type: full
  dir: %s
  allow_delete: false
  interval: "2m"
}
resolver_preload: {
  %s: %s
  %s: %s
}
jetstream: {}

# Then connect:
#   supervisor:  go run ./cmd/supervisor --nats-url nats://<your-server>:4222 --creds %s
#   operators:   nats --server nats://<your-server>:4222 --creds %s ...   (tetherctl uses it from --data-dir)
#   viewers:     --creds %s --inbox-prefix _INBOX.viewer   (tetherctl needs only --creds)
#   agents:      tetherctl --nats-url nats://<your-server>:4222 agent add <id> --role <role>
#
# With nsc and your own operator instead: import the Tether account (re-signed by your operator;
# its signing key stays, so credentials from 'tetherctl agent add' keep working) and push it:
#   nsc import account --file %s --force
#   nsc push --account TETHER
# revocations are then yours too (nsc revocations add-user, nsc push); system.creds does not apply.
`, q(m.OperatorJWT), q(m.SystemPublicKey()), q(a.f.resolverDir), q(m.SystemPublicKey()), q(m.SystemJWT), q(m.AccountPublicKey()), q(m.AccountJWT),
		m.Path(auth.SupervisorFile), m.Path(auth.OperatorFile), m.Path(auth.ViewerFile), m.Path("account.jwt"))
	if file != nil {
		if err := file.Close(); err != nil {
			return fail(nil, err, "write %s: %v", a.f.out, err)
		}
		fmt.Fprintf(a.out, "nats-server configuration written to %s (mode 0600)\n", a.f.out)
	}
	return nil
}

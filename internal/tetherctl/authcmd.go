package tetherctl

import (
	"context"
	"flag"
	"fmt"
	"strconv"

	"github.com/tether-dev/tether/supervisor/auth"
)

func authFlags(fs *flag.FlagSet, f *cmdFlags) {
	fs.StringVar(&f.resolverDir, "resolver-dir", "./tether-jwt", "")
}

// cmdAuth prints the nats-server configuration that makes an operator's own
// server or cluster trust Tether's operator and accounts (creating the
// material in --data-dir if there is none yet), and how to connect each
// party.
func (a *app) cmdAuth(_ context.Context, _ []string) error {
	m, created, err := auth.Ensure(a.g.dataDir, a.g.prefix)
	if err != nil {
		return fail(nil, err, "%v", err)
	}
	q := strconv.Quote
	if created {
		fmt.Fprintf(a.out, "# created the auth material in %s (keep it like a root password)\n", m.Dir)
	}
	fmt.Fprintf(a.out, `# Tether on your own NATS: NATS JWT operator mode.
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
#   viewers:     --creds %s
#   agents:      tetherctl --nats-url nats://<your-server>:4222 agent add <id> --role <role>
`, q(m.OperatorJWT), q(m.SystemPublicKey()), q(a.f.resolverDir), q(m.SystemPublicKey()), q(m.SystemJWT), q(m.AccountPublicKey()), q(m.AccountJWT),
		m.Path(auth.SupervisorFile), m.Path(auth.OperatorFile), m.Path(auth.ViewerFile))
	return nil
}

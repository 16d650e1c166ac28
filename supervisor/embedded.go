package supervisor

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/tether-dev/tether/supervisor/auth"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// startEmbedded runs a nats-server with JetStream on cfg.Listen, its store
// in cfg.DataDir with fsync on every write (configs are few and must not be
// lost), pinging clients every cfg.ServerPingInterval, with auth always on:
// NATS JWT operator mode with the material of m, accounts kept by a full
// account resolver in <data-dir>/auth/jwt (so a revocation pushed on
// $SYS.REQ.CLAIMS.UPDATE takes effect at once and survives restarts).
func startEmbedded(cfg Config, m *auth.Material, log zerolog.Logger) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("supervisor: --listen %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("supervisor: --listen %q: port: %w", cfg.Listen, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT // nats-server reads 0 as its default, 4222
	}
	oc, err := m.OperatorClaims()
	if err != nil {
		return nil, fmt.Errorf("supervisor: operator JWT in %s: %w", m.Dir, err)
	}
	res, err := server.NewDirAccResolver(m.Path("jwt"), 0, 2*time.Minute, server.NoDelete)
	if err != nil {
		return nil, fmt.Errorf("supervisor: account resolver in %s: %w", m.Path("jwt"), err)
	}
	// The account files are the source of truth at start: a revocation
	// written by tetherctl while the server was down is applied now.
	for pub, token := range map[string]string{m.SystemPublicKey(): m.SystemJWT, m.AccountPublicKey(): m.AccountJWT} {
		if err := res.Store(pub, token); err != nil {
			return nil, fmt.Errorf("supervisor: account resolver: %w", err)
		}
	}
	opts := &server.Options{
		ServerName:       "tether",
		Host:             host,
		Port:             port,
		JetStream:        true,
		StoreDir:         cfg.DataDir,
		SyncAlways:       true,
		PingInterval:     cfg.ServerPingInterval,
		MaxPingsOut:      2,
		NoSigs:           true,
		TrustedOperators: []*jwt.OperatorClaims{oc},
		SystemAccount:    m.SystemPublicKey(),
		AccountResolver:  res,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("supervisor: embedded nats-server: %w", err)
	}
	ns.SetLoggerV2(serverLogger{log.With().Str("component", "nats-server").Logger()}, false, false, false)
	ns.Start()
	if !ns.ReadyForConnections(embeddedReadyWait) {
		ns.Shutdown()
		ns.WaitForShutdown()
		if err := checkListen(cfg.Listen, ""); err != nil {
			return nil, err // taken since Start checked it
		}
		return nil, fmt.Errorf("supervisor: embedded nats-server on %s not ready within %v; its log says why", cfg.Listen, embeddedReadyWait)
	}
	return ns, nil
}

// embeddedReadyWait bounds the embedded server's start.
const embeddedReadyWait = 10 * time.Second

// ListenInUseError is Start's error when another process holds the
// embedded server's Listen address.
type ListenInUseError struct {
	Listen string
	// DataDir and Holder are set when another process holds the data
	// directory's lock too: most likely that supervisor holds the port.
	DataDir string
	Holder  *LockHolder
	Err     error // the bind error
}

func (e *ListenInUseError) Error() string {
	_, port, _ := net.SplitHostPort(e.Listen)
	who, stop := "another process (possibly another supervisor)", "it"
	if e.Holder != nil {
		who = fmt.Sprintf("another process, probably the supervisor %s that holds the data dir %s", e.Holder, e.DataDir)
		stop = e.Holder.stopHint()
	}
	return fmt.Sprintf("supervisor: --listen %s: port %s is held by %s; stop %s, or use a different --listen together with a different --data-dir: %v",
		e.Listen, port, who, stop, e.Err)
}

func (e *ListenInUseError) Unwrap() error { return e.Err }

// checkListen binds listen for a moment, so that a port held by another
// process is reported at once and plainly (nats-server would only log it
// and never become ready). When another process holds dataDir's lock (""
// skips the check), the error names it.
func checkListen(listen, dataDir string) error {
	ln, err := net.Listen("tcp", listen)
	if err == nil {
		_ = ln.Close()
		return nil
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("supervisor: --listen %s: %w", listen, err)
	}
	e := &ListenInUseError{Listen: listen, Err: err}
	if dataDir != "" {
		if h, ok := peekDataDirLock(dataDir); ok {
			e.DataDir, e.Holder = dataDir, &h
		}
	}
	return e
}

// serverLogger adapts zerolog to nats-server's Logger. Its notices (the
// start banner, version, listen addresses: some twenty lines at every
// start) are debug: the supervisor logs one line of its own for the
// embedded server.
type serverLogger struct{ log zerolog.Logger }

func (l serverLogger) Noticef(f string, v ...any) { l.log.Debug().Msgf(f, v...) }
func (l serverLogger) Warnf(f string, v ...any)   { l.log.Warn().Msgf(f, v...) }
func (l serverLogger) Fatalf(f string, v ...any)  { l.log.Error().Msgf(f, v...) }
func (l serverLogger) Errorf(f string, v ...any)  { l.log.Error().Msgf(f, v...) }
func (l serverLogger) Debugf(f string, v ...any)  { l.log.Debug().Msgf(f, v...) }
func (l serverLogger) Tracef(f string, v ...any)  { l.log.Trace().Msgf(f, v...) }

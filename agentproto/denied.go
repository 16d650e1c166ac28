package agentproto

import (
	"context"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"
)

// PermissionError reports a publish the NATS server refused for this
// connection's credentials. It is permanent: retrying the same subject with
// the same credentials cannot succeed.
type PermissionError struct {
	Subject string
}

func (e *PermissionError) Error() string {
	return "agentproto: NATS denied publishing to " + strconv.Quote(e.Subject) +
		": this agent's credentials do not allow it (check the agent id and its creds file); not retried"
}

// Is makes errors.Is(err, nats.ErrPermissionViolation) true.
func (e *PermissionError) Is(target error) bool { return target == nats.ErrPermissionViolation }

// deniedWatch ends requests whose subject the server refuses at once,
// instead of letting each wait out its timeout and be retried: the
// violation arrives asynchronously, so requests in flight register here.
type deniedWatch struct {
	mu sync.Mutex
	m  map[string]map[*context.CancelCauseFunc]struct{}
}

// guard returns a context that ends with a *PermissionError if the server
// refuses a publish to subject while it is in use; done unregisters it.
func (w *deniedWatch) guard(ctx context.Context, subject string) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	w.mu.Lock()
	if w.m == nil {
		w.m = map[string]map[*context.CancelCauseFunc]struct{}{}
	}
	if w.m[subject] == nil {
		w.m[subject] = map[*context.CancelCauseFunc]struct{}{}
	}
	w.m[subject][&cancel] = struct{}{}
	w.mu.Unlock()
	return ctx, func() {
		w.mu.Lock()
		delete(w.m[subject], &cancel)
		if len(w.m[subject]) == 0 {
			delete(w.m, subject)
		}
		w.mu.Unlock()
		cancel(nil)
	}
}

// denied ends every request in flight to subject.
func (w *deniedWatch) denied(subject string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for c := range w.m[subject] {
		(*c)(&PermissionError{Subject: subject})
	}
}

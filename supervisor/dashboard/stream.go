package dashboard

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// Stream pacing.
const (
	// streamMinGap throttles one stream: messages at most this often, each
	// carrying the latest snapshot (intermediate ones are skipped; events
	// and samples are never skipped, only batched).
	streamMinGap = 50 * time.Millisecond
	// streamWriteTimeout ends a stream whose client stopped reading.
	streamWriteTimeout = 10 * time.Second
	// streamRetryMS is the reconnect delay the browser is told to use.
	streamRetryMS = 2000
)

// streamMsg is one server-sent "tick" event. Reset: events and samples
// replace what the client holds (first message, or the client fell behind
// the rings). Page and Roles are sent only when they changed.
type streamMsg struct {
	fleetReply
	Reset         bool            `json:"reset,omitempty"`
	Events        []stateEvent    `json:"events,omitempty"`
	EventsDropped int             `json:"events_dropped,omitempty"`
	Samples       []latencySample `json:"samples,omitempty"`
	PageJSON      json.RawMessage `json:"page,omitempty"`
}

// stream is one client's position: what it was last sent.
type stream struct {
	q        pageQuery
	snapSeq  uint64
	evSeq    uint64
	smpSeq   uint64
	roles    string
	notices  []byte
	page     []byte
	lastSent time.Time
	started  bool
}

// serveEvents is GET /events: server-sent events, one "tick" per sample
// (throttled) with counts, new state changes, new latency samples and the
// client's page of the table when it changed. The query is /api/fleet's;
// ?agent=ID streams that agent's row and events only. It ends when the
// client goes away or the supervisor closes.
func (d *Dashboard) serveEvents(w http.ResponseWriter, r *http.Request) {
	q, err := parsePageQuery(r.URL.Query())
	if err != nil {
		apiError(w, http.StatusBadRequest, err)
		return
	}
	if !d.enter() {
		apiError(w, http.StatusServiceUnavailable, errClosing)
		return
	}
	defer d.leave()
	rc := http.NewResponseController(w)
	secure(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if !d.write(w, rc, []byte("retry: "+strconv.Itoa(streamRetryMS)+"\n\n")) {
		return
	}
	st := &stream{q: q}
	ctx := r.Context()
	var wait *time.Timer
	defer func() {
		if wait != nil {
			wait.Stop()
		}
	}()
	for {
		snap, next := d.rec.current()
		if snap.seq != st.snapSeq || !st.started {
			if gap := streamMinGap - time.Since(st.lastSent); st.started && gap > 0 {
				if wait == nil {
					wait = time.NewTimer(gap)
				} else {
					wait.Reset(gap)
				}
				select {
				case <-ctx.Done():
					return
				case <-d.done:
					return
				case <-wait.C:
				}
				continue // take the latest snapshot
			}
			if !d.write(w, rc, d.message(st, snap)) {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-d.done:
			return
		case <-next:
		}
	}
}

// message builds the next SSE frame for st from snap and advances st.
func (d *Dashboard) message(st *stream, snap *fleetSnap) []byte {
	m := streamMsg{fleetReply: d.head(snap)}
	var keep func(*stateEvent) bool
	if id := st.q.agent; id != "" {
		keep = func(e *stateEvent) bool { return e.Agent == id }
	}
	evs, dropped, last, missedEv := d.rec.eventsSince(st.evSeq, maxEventsShown, keep)
	var smp []latencySample
	missedSmp := false
	if st.q.agent == "" {
		smp, missedSmp = d.rec.samplesSince(st.smpSeq)
	}
	if !st.started || missedEv || missedSmp {
		m.Reset = true
		if st.started {
			evs, dropped, last, _ = d.rec.eventsSince(0, maxEventsShown, keep)
			if st.q.agent == "" {
				smp, _ = d.rec.samplesSince(0)
			}
		}
	}
	m.Events, m.EventsDropped, m.Samples = evs, dropped, smp
	st.evSeq = last
	if n := len(smp); n > 0 {
		st.smpSeq = smp[n-1].Seq
	}
	if roles := joinRoles(snap.roles); roles != st.roles || !st.started {
		m.Roles, st.roles = slices.Clip(snap.roles), roles
		if m.Roles == nil {
			m.Roles = []string{}
		}
	}
	if st.q.agent == "" && (!bytes.Equal(snap.notices, st.notices) || !st.started) {
		m.Notices, st.notices = snap.notices, snap.notices
	}
	page, _ := json.Marshal(snap.page(st.q))
	if !bytes.Equal(page, st.page) {
		m.PageJSON, st.page = page, page
	}
	st.snapSeq, st.started, st.lastSent = snap.seq, true, time.Now()
	data, _ := json.Marshal(m)
	buf := make([]byte, 0, len(data)+48)
	buf = append(buf, "id: "...)
	buf = strconv.AppendUint(buf, snap.seq, 10)
	buf = append(buf, "\nevent: tick\ndata: "...)
	buf = append(buf, data...)
	return append(buf, "\n\n"...)
}

// write sends one frame and flushes it, bounded by streamWriteTimeout.
func (d *Dashboard) write(w http.ResponseWriter, rc *http.ResponseController, frame []byte) bool {
	_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if _, err := w.Write(frame); err != nil {
		return false
	}
	if err := rc.Flush(); err != nil {
		d.log.Debug().Err(err).Msg("dashboard stream: flush failed; client gone")
		return false
	}
	return true
}

func joinRoles(roles []string) string {
	var b bytes.Buffer
	for _, r := range roles {
		b.WriteString(r)
		b.WriteByte(0)
	}
	return b.String()
}

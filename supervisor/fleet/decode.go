package fleet

import (
	"encoding/json"
	"errors"
	"strings"
)

// The heartbeat decoder is the hot path of the supervisor: a fleet of
// 100,000 agents at 1 Hz is 100,000 decodes a second. decodeHeartbeat reads
// the common shape (plain strings, integers, decimals) in one pass without
// reflection and skips unknown fields; anything else — escapes, exponents,
// odd casing of a known field, a type mismatch, a syntax error — falls back
// to encoding/json, which then decides. So the fast path only ever accepts
// what encoding/json accepts, with the same result.

var errSlowPath = errors.New("heartbeat needs the slow path")

// decodeHeartbeat decodes a heartbeat into hb (which must be zero).
func decodeHeartbeat(data []byte, hb *hbIn) error {
	d := hbDecoder{b: data}
	if err := d.heartbeat(hb); err == nil {
		return nil
	}
	*hb = hbIn{}
	return json.Unmarshal(data, hb)
}

type hbDecoder struct {
	b []byte
	i int
}

func (d *hbDecoder) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// expect consumes byte c after optional whitespace.
func (d *hbDecoder) expect(c byte) bool {
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

// object calls field for each key of an object; field must consume the value.
func (d *hbDecoder) object(field func(key []byte) error) error {
	if !d.expect('{') {
		return errSlowPath
	}
	if d.expect('}') {
		return nil
	}
	for {
		key, err := d.rawString()
		if err != nil || !d.expect(':') {
			return errSlowPath
		}
		d.ws()
		if err := field(key); err != nil {
			return err
		}
		if d.expect(',') {
			continue
		}
		if d.expect('}') {
			return nil
		}
		return errSlowPath
	}
}

func (d *hbDecoder) heartbeat(hb *hbIn) error {
	err := d.object(func(k []byte) error {
		switch string(k) {
		case "agent":
			return d.str(&hb.Agent)
		case "instance":
			return d.str(&hb.Instance)
		case "seq":
			return d.uint(&hb.Seq)
		case "sent_at":
			return d.str(&hb.SentAt)
		case "interval_ms":
			var v uint64
			err := d.uint(&v)
			hb.IntervalMS = int64(min(v, 1<<62))
			return err
		case "probe_ack":
			return d.str(&hb.ProbeAck)
		case "acks":
			return d.strs(&hb.Acks)
		case "conn":
			return d.conn(&hb.Conn)
		case "calls":
			if d.null() {
				hb.Calls = nil
				return nil
			}
			if hb.Calls == nil {
				hb.Calls = &callInfo{}
			}
			return d.calls(hb.Calls)
		case "configs":
			start := d.i
			if err := d.skip(0); err != nil {
				return err
			}
			hb.Configs = d.b[start:d.i]
			return nil
		case "goodbye":
			return d.bool(&hb.Goodbye)
		case "servers":
			return d.servers(&hb.Servers)
		case "consumers":
			return d.consumers(&hb.Consumers)
		}
		return d.unknown(k, "agent", "instance", "seq", "sent_at", "interval_ms", "probe_ack", "acks", "conn", "calls", "configs", "goodbye", "servers", "consumers")
	})
	d.ws()
	if err != nil || d.i != len(d.b) {
		return errSlowPath
	}
	return nil
}

func (d *hbDecoder) conn(c *connInfo) error {
	if d.null() {
		return nil
	}
	return d.object(func(k []byte) error {
		switch string(k) {
		case "state":
			return d.str(&c.State)
		case "reconnects":
			return d.uint(&c.Reconnects)
		case "rtt_ms":
			return d.float(&c.RTTMS)
		}
		return d.unknown(k, "state", "reconnects", "rtt_ms")
	})
}

func (d *hbDecoder) calls(c *callInfo) error {
	return d.object(func(k []byte) error {
		switch string(k) {
		case "ok":
			return d.uint(&c.OK)
		case "retried":
			return d.uint(&c.Retried)
		case "failed":
			return d.uint(&c.Failed)
		case "unknown":
			return d.uint(&c.Unknown)
		case "last_error_class":
			return d.str(&c.LastErrorClass)
		}
		return d.unknown(k, "ok", "retried", "failed", "unknown", "last_error_class")
	})
}

// consumers reads the heartbeat's consumers array (at most
// maxDecodedConsumers entries on the fast path; more go the slow path,
// whose result the bounds then refuse).
func (d *hbDecoder) consumers(dst *[]consumerIn) error {
	if d.null() {
		*dst = nil
		return nil
	}
	out := []consumerIn{}
	err := d.array(func() error {
		if len(out) >= maxDecodedConsumers {
			return errSlowPath
		}
		out = append(out, consumerIn{})
		return d.consumer(&out[len(out)-1])
	})
	*dst = out
	return err
}

func (d *hbDecoder) consumer(c *consumerIn) error {
	d.ws()
	return d.object(func(k []byte) error {
		switch string(k) {
		case "stream":
			return d.str(&c.Stream)
		case "durable":
			return d.str(&c.Durable)
		case "handled":
			return d.uint(&c.Handled)
		case "acked":
			return d.uint(&c.Acked)
		case "naked":
			return d.uint(&c.Naked)
		case "in_flight":
			return d.uint(&c.InFlight)
		case "last_ack_ms_ago":
			if d.null() {
				c.LastAckMSAgo = nil
				return nil
			}
			var v uint64
			if err := d.uint(&v); err != nil {
				return err
			}
			c.LastAckMSAgo = &v
			return nil
		}
		return d.unknown(k, "stream", "durable", "handled", "acked", "naked", "in_flight", "last_ack_ms_ago")
	})
}

// unknown skips the value of an unknown key; a key that matches a known
// one case-insensitively takes the slow path (encoding/json would use it).
func (d *hbDecoder) unknown(k []byte, known ...string) error {
	for _, n := range known {
		if strings.EqualFold(string(k), n) {
			return errSlowPath
		}
	}
	return d.skip(0)
}

// rawString returns the bytes of a string without escapes.
func (d *hbDecoder) rawString() ([]byte, error) {
	if !d.expect('"') {
		return nil, errSlowPath
	}
	start := d.i
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			d.i++
			return d.b[start : d.i-1], nil
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, errSlowPath // escapes, control bytes, non-ASCII: let encoding/json decide
		}
		d.i++
	}
	return nil, errSlowPath
}

func (d *hbDecoder) null() bool {
	if len(d.b)-d.i >= 4 && string(d.b[d.i:d.i+4]) == "null" {
		d.i += 4
		return true
	}
	return false
}

func (d *hbDecoder) str(dst *string) error {
	if d.null() {
		return nil
	}
	s, err := d.rawString()
	if err == nil {
		*dst = string(s)
	}
	return err
}

func (d *hbDecoder) strs(dst *[]string) error {
	if d.null() {
		*dst = nil
		return nil
	}
	out := []string{}
	err := d.array(func() error {
		var v string
		if err := d.str(&v); err != nil {
			return err
		}
		out = append(out, v)
		return nil
	})
	*dst = out
	return err
}

// array calls elem for each element of an array; elem must consume it.
func (d *hbDecoder) array(elem func() error) error {
	if !d.expect('[') {
		return errSlowPath
	}
	if d.expect(']') {
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		if d.expect(',') {
			d.ws()
			continue
		}
		if d.expect(']') {
			return nil
		}
		return errSlowPath
	}
}

func (d *hbDecoder) bool(dst *bool) error {
	switch {
	case len(d.b)-d.i >= 4 && string(d.b[d.i:d.i+4]) == "true":
		*dst, d.i = true, d.i+4
	case len(d.b)-d.i >= 5 && string(d.b[d.i:d.i+5]) == "false":
		*dst, d.i = false, d.i+5
	case d.null():
	default:
		return errSlowPath
	}
	return nil
}

// uint reads a non-negative integer without exponent or fraction.
func (d *hbDecoder) uint(dst *uint64) error {
	if d.null() {
		return nil
	}
	start := d.i
	var v uint64
	for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
		n := v*10 + uint64(d.b[d.i]-'0')
		if v > (1<<64-1)/10 || n < v {
			return errSlowPath
		}
		v = n
		d.i++
	}
	if d.i == start || d.i-start > 1 && d.b[start] == '0' || d.i < len(d.b) && (d.b[d.i] == '.' || d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		return errSlowPath
	}
	*dst = v
	return nil
}

// float reads a plain decimal number (sign, digits, optional fraction) of
// at most 15 significant digits, exactly as strconv's exact fast path
// does: an integer mantissa below 2^53 divided by a power of ten.
func (d *hbDecoder) float(dst *float64) error {
	if d.null() {
		return nil
	}
	neg := d.i < len(d.b) && d.b[d.i] == '-'
	if neg {
		d.i++
	}
	var mant uint64
	digits, frac, dot := 0, 0, false
	start := d.i
	for ; d.i < len(d.b); d.i++ {
		c := d.b[d.i]
		switch {
		case c >= '0' && c <= '9':
			mant = mant*10 + uint64(c-'0')
			digits++
			if dot {
				frac++
			}
		case c == '.' && !dot && digits > 0:
			dot = true
		default:
			goto done
		}
	}
done:
	if digits == 0 || digits > 15 || dot && frac == 0 || d.b[start] == '0' && d.i > start+1 && d.b[start+1] != '.' ||
		d.i < len(d.b) && (d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		return errSlowPath
	}
	v := float64(mant) / pow10[frac]
	if neg {
		v = -v
	}
	*dst = v
	return nil
}

var pow10 = [16]float64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15}

// skip passes over one JSON value; only structure is checked here, the
// slow path validates anything unusual.
func (d *hbDecoder) skip(depth int) error {
	if depth > 32 || d.i >= len(d.b) {
		return errSlowPath
	}
	switch c := d.b[d.i]; {
	case c == '"':
		_, err := d.rawString()
		return err
	case c == '{':
		return d.object(func([]byte) error { d.ws(); return d.skip(depth + 1) })
	case c == '[':
		d.i++
		if d.expect(']') {
			return nil
		}
		for {
			d.ws()
			if err := d.skip(depth + 1); err != nil {
				return err
			}
			if d.expect(',') {
				continue
			}
			if d.expect(']') {
				return nil
			}
			return errSlowPath
		}
	case c == 't' || c == 'f' || c == 'n':
		var b bool
		return d.bool(&b)
	case c == '-' || c >= '0' && c <= '9':
		var f float64
		return d.float(&f)
	}
	return errSlowPath
}

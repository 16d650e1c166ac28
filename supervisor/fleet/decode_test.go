package fleet

import (
	"encoding/json"
	"reflect"
	"testing"
)

var heartbeatSeeds = []string{
	`{"agent":"a1","instance":"i-1","seq":7,"sent_at":"2026-01-02T03:04:05.123Z","interval_ms":5000,"probe_ack":"e-p9","acks":["c1","c2"],"conn":{"state":"connected","reconnects":2,"rtt_ms":0.25},"configs":{"github":{"revision":12,"applied":true},"jira":{"revision":3,"applied":false,"error":"boom"}},"calls":{"ok":10,"retried":2,"failed":1,"unknown":0,"last_error_class":"transient"},"goodbye":false}`,
	` { "agent" : "a1" , "instance":"i","seq":1 , "conn":{"state":"reconnecting","reconnects":0,"rtt_ms":12},"extra":{"x":[1,2.5,-3,true,false,null,"s",{"y":[]}]} } `,
	`{"agent":"a1","instance":"i","seq":1,"acks":[],"calls":null,"conn":null,"configs":null,"goodbye":true}`,
	`{"instance":"i","seq":18446744073709551615,"interval_ms":0,"conn":{"rtt_ms":-0.5}}`,
	`{"agent":"a\u0031","instance":"i","seq":1}`,             // escape: slow path
	`{"Seq":3,"instance":"i"}`,                               // other casing: slow path
	`{"instance":"i","seq":1e3}`,                             // exponent: slow path, error
	`{"instance":"i","seq":-1}`,                              // negative uint: error
	`{"instance":"i","seq":01}`,                              // leading zero: invalid JSON
	`{"instance":"i","seq":1}x`,                              // trailing data
	`{"instance":"i","conn":{"rtt_ms":1.}}`,                  // invalid number
	`{"instance":"i","calls":{"ok":1},"calls":{"failed":2}}`, // duplicate key merges
	`{"instance":"ü","seq":2}`,                               // non-ASCII: slow path
	`{"instance":"i","conn":{"rtt_ms":1234567890.123456789}}`,
	`[]`, `null`, `{`, ``, `{"acks":["a",null,"b"]}`,
	`{"instance":"i","seq":1,"consumers":[{"stream":"TASKS_a7","durable":"a7","handled":120,"acked":118,"naked":2,"in_flight":1,"last_ack_ms_ago":800},{"stream":"S","durable":"D","handled":0,"acked":0,"naked":0,"in_flight":0}]}`,
	`{"instance":"i","consumers":[]}`, `{"instance":"i","consumers":null}`, `{"instance":"i","consumers":[null]}`,
	`{"instance":"i","consumers":[{"stream":"S","durable":"D","last_ack_ms_ago":null,"x":[1]}]}`,
	`{"instance":"i","consumers":[{"Stream":"S"}]}`, `{"instance":"i","consumers":[{"acked":-1}]}`,
	`{"instance":"i","consumers":{"stream":"S"}}`,
}

// checkDecode asserts the fast decoder agrees with encoding/json.
func checkDecode(t *testing.T, data []byte) {
	var fast, slow hbIn
	ferr := decodeHeartbeat(data, &fast)
	serr := json.Unmarshal(data, &slow)
	if (ferr == nil) != (serr == nil) {
		t.Fatalf("%q: fast err %v, encoding/json err %v", data, ferr, serr)
	}
	if serr == nil && !reflect.DeepEqual(fast, slow) {
		t.Fatalf("%q:\nfast %+v\njson %+v", data, fast, slow)
	}
}

func TestHeartbeatDecoderMatchesEncodingJSON(t *testing.T) {
	for _, s := range heartbeatSeeds {
		checkDecode(t, []byte(s))
	}
	// The fast path is taken for the common shape.
	var hb hbIn
	d := hbDecoder{b: []byte(heartbeatSeeds[0])}
	if err := d.heartbeat(&hb); err != nil || hb.Seq != 7 || len(hb.Acks) != 2 || hb.Calls.Retried != 2 || hb.Conn.RTTMS != 0.25 {
		t.Fatalf("fast path not taken or wrong: %v %+v", err, hb)
	}
	hb = hbIn{}
	d = hbDecoder{b: []byte(heartbeatSeeds[len(heartbeatSeeds)-8])}
	if err := d.heartbeat(&hb); err != nil || len(hb.Consumers) != 2 || hb.Consumers[0].Acked != 118 ||
		*hb.Consumers[0].LastAckMSAgo != 800 || hb.Consumers[1].LastAckMSAgo != nil {
		t.Fatalf("consumers: fast path not taken or wrong: %v %+v", err, hb.Consumers)
	}
}

func FuzzHeartbeatDecoder(f *testing.F) {
	for _, s := range heartbeatSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkDecode(t, data) })
}

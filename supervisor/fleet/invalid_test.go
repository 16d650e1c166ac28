package fleet

import (
	"fmt"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"github.com/tether-dev/tether/kvconfig"
)

// The invalid entries fleet.status lists carry every problem of a typical
// value, and stay bounded for a value with very many.
func TestInvalidEntryListsEveryProblem(t *testing.T) {
	p := newPusher(nil, zerolog.Nop(), nil)
	ix := kvconfig.NewIndex()
	ch := ix.ApplyConfig("global.github", 4, kvconfig.OpPut,
		[]byte(`{"transport":"http","retry":{"max_attemps":3},"env":{"TOKEN":"a","TOKEN":"b"}}`))
	p.noteValidity(ch)
	inv := p.invalidEntries(maxInvalidShown)
	if len(inv) != 1 || inv[0].Error != ch.Err.Error() {
		t.Fatalf("invalid entries %+v, want the whole error %q", inv, ch.Err)
	}
	for _, want := range []string{`revision 4: 3 problems`, `field "retry.max_attemps"`, `field "env.TOKEN": duplicate key`, `field "url": required`} {
		if !strings.Contains(inv[0].Error, want) {
			t.Errorf("listed error %q lacks %q", inv[0].Error, want)
		}
	}
	var b strings.Builder
	b.WriteString(`{"url":"https://x"`)
	for i := range 100 {
		fmt.Fprintf(&b, `,"%s%d":1`, strings.Repeat("x", 60), i)
	}
	p.noteValidity(ix.ApplyConfig("global.many", 5, kvconfig.OpPut, []byte(b.String()+"}")))
	for _, e := range p.invalidEntries(maxInvalidShown) {
		if len(e.Error) > maxInvalidError+len("...") {
			t.Errorf("%s: error of %d bytes", e.Key, len(e.Error))
		}
	}
}

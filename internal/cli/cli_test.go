package cli

import (
	"flag"
	"strings"
	"testing"
)

func TestDescribeLayout(t *testing.T) {
	fs := flag.NewFlagSet("tool", flag.ContinueOnError)
	Describe(fs, "tool: does one thing to another thing, and says so\nover two lines.", "tool --x 1\ngo run ./cmd/tool", "tool [flags]")
	fs.Int("x", 0, "a number")
	var b strings.Builder
	fs.SetOutput(&b)
	fs.Usage()
	want := "tool: does one thing to another thing, and says so\nover two lines.\n\nexample:\n  tool --x 1\n  go run ./cmd/tool\n\nusage: tool [flags]\n\nflags:\n"
	if !strings.HasPrefix(b.String(), want) {
		t.Fatalf("help:\n%s\nwant it to start:\n%s", b.String(), want)
	}
	if err := CheckHelp(b.String(), "tool"); err != nil {
		t.Error(err)
	}
}

func TestCheckHelp(t *testing.T) {
	for help, ok := range map[string]bool{
		"tool: does one thing to another thing, well.\n\nexample:\n  tool --x\n":  true,
		"tool — does one thing to another thing, well.\n\nexample:\n  tool --x\n": true,
		"usage: tool [flags]\n\ntool: does one thing to another thing.\n":         false, // usage first
		"tool: does one thing to another thing, well.\n\nusage: tool\n":           false, // no example
		"tool: does one thing to another thing, well.\n\nexample:\n  other x\n":   false, // example runs something else
		"tool: short.\n\nexample:\n  tool --x\n":                                  false,
		"tool: does one thing to another thing, well.\n\nexample:\n":              false,
	} {
		if err := CheckHelp(help, "tool"); (err == nil) != ok {
			t.Errorf("CheckHelp(%q) = %v, want ok %v", help, err, ok)
		}
	}
}

package cli

import (
	"flag"
	"maps"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
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

func TestDependsOnForms(t *testing.T) {
	var c ComposeFile
	err := yaml.Unmarshal([]byte(`services:
  a: {depends_on: [b, c]}
  d:
    depends_on:
      b: {condition: service_healthy}
      c: {condition: service_completed_successfully}
      e: {}
`), &c)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Services["a"].DependsOn; !maps.Equal(got, DependsOn{"b": ConditionStarted, "c": ConditionStarted}) {
		t.Errorf("list form: %v", got)
	}
	if got := c.Services["d"].DependsOn; !maps.Equal(got, DependsOn{"b": ConditionHealthy, "c": ConditionCompleted, "e": ConditionStarted}) {
		t.Errorf("map form: %v", got)
	}
	if got := c.Services["d"].DependsOn.Names(); !slices.Equal(got, []string{"b", "c", "e"}) {
		t.Errorf("Names: %v", got)
	}
	err = yaml.Unmarshal([]byte("services:\n  a:\n    depends_on:\n      b: {condition: service_healty}\n"), &c)
	if err == nil || !strings.Contains(err.Error(), "service_healty") {
		t.Errorf("a misspelt condition: %v", err)
	}
}

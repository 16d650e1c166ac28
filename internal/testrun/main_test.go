package main

import (
	"strings"
	"testing"
)

const stream = `{"Action":"start","Package":"p/a"}
{"Action":"run","Package":"p/a","Test":"TestOK"}
{"Action":"output","Package":"p/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"pass","Package":"p/a","Test":"TestOK","Elapsed":0.01}
{"Action":"run","Package":"p/a","Test":"TestTool"}
{"Action":"output","Package":"p/a","Test":"TestTool","Output":"=== RUN   TestTool\n"}
{"Action":"output","Package":"p/a","Test":"TestTool","Output":"    tools.go:79: chromium is not installed; install it with: apt-get install chromium\n"}
{"Action":"output","Package":"p/a","Test":"TestTool","Output":"--- SKIP: TestTool (0.00s)\n"}
{"Action":"skip","Package":"p/a","Test":"TestTool","Elapsed":0}
{"Action":"pass","Package":"p/a","Elapsed":0.5}
{"Action":"run","Package":"p/b","Test":"TestBad"}
{"Action":"output","Package":"p/b","Test":"TestBad","Output":"    b_test.go:9: boom\n"}
{"Action":"fail","Package":"p/b","Test":"TestBad","Elapsed":0.2}
{"Action":"output","Package":"p/b","Output":"FAIL\n"}
{"Action":"fail","Package":"p/b","Elapsed":0.3}
{"ImportPath":"p/c","Action":"build-output","Output":"c.go:1: syntax error\n"}
{"ImportPath":"p/c","Action":"build-fail"}
not json at all
`

func TestSummarize(t *testing.T) {
	var out strings.Builder
	r := summarize(strings.NewReader(stream), &out)
	if r.ok {
		t.Error("a run with a failed test reported ok")
	}
	if len(r.failed) != 1 || r.failed[0] != "p/b TestBad" {
		t.Errorf("failed %v, want [p/b TestBad]", r.failed)
	}
	want := "chromium is not installed"
	if got := r.skipped["p/a TestTool"]; !strings.Contains(got, want) || strings.Contains(got, "--- SKIP") {
		t.Errorf("skip reason %q, want the test's own message only", got)
	}
	for _, s := range []string{"ok  \tp/a\t0.500s", "--- FAIL: p/b TestBad", "b_test.go:9: boom", "FAIL\tp/b", "c.go:1: syntax error", "not json at all"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out.String())
		}
	}
	if strings.Contains(out.String(), "=== RUN   TestOK") {
		t.Errorf("a passing test's output was printed:\n%s", out.String())
	}
}

func TestSplitArgs(t *testing.T) {
	for _, tc := range []struct {
		in          string
		pkgs, extra string
	}{
		{"", "./...", ""},
		{"./a/ ./b/", "./a/ ./b/", ""},
		{"./a/ -- -run X", "./a/", "-run X"},
		{"./a/ -run X", "./a/", "-run X"},
		{"-run X", "./...", "-run X"},
	} {
		p, e := splitArgs(strings.Fields(tc.in))
		if strings.Join(p, " ") != tc.pkgs || strings.Join(e, " ") != tc.extra {
			t.Errorf("splitArgs(%q) = %q, %q; want %q, %q", tc.in, p, e, tc.pkgs, tc.extra)
		}
	}
}

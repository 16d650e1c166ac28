// Command testrun is the project's test command: it runs
//
//	go test -race -count=1 -json ./...
//
// (never cached results), prints one line per package as go test does,
// the full output of every failed test, and at the end a summary of every
// skipped test with its reason, which plain `go test` hides unless -v.
// Under CI=true a skipped test fails the run: in CI every tool is
// installed, so a skip means a test that should have run did not.
//
// With -n N it runs the suite N times in a row and ends with a table of
// failures per test, the way to tell a flaky test from a broken one:
//
//	go run ./internal/testrun -n 20
//	go run ./internal/testrun -n 20 ./supervisor/ ./test/
//
// Flags after the packages, or after --, go to go test unchanged
// (go run ./internal/testrun ./kvconfig/ -- -run Resolve). It exits 1 if
// any run failed.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output and build-fail
	Test       string
	Elapsed    float64
	Output     string
}

// maxOutputLines bounds how much of one failed test's output is printed.
const maxOutputLines = 400

// result is what one run found.
type result struct {
	failed  []string          // "pkg Test"
	skipped map[string]string // "pkg Test" → reason
	ok      bool
}

func main() {
	n := flag.Int("n", 1, "run the suite `N` times in a row and count failures per test")
	race := flag.Bool("race", true, "run with the race detector")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: go run ./internal/testrun [-n N] [-race=false] [packages] [-- go test flags]")
		flag.PrintDefaults()
	}
	flag.Parse()
	pkgs, extra := splitArgs(flag.Args())
	args := []string{"test", "-count=1", "-json"}
	if *race {
		args = append(args, "-race")
	}
	args = append(append(args, extra...), pkgs...)
	os.Exit(run(*n, args, os.Getenv("CI") == "true"))
}

// splitArgs separates packages from go test flags: everything from the
// first "--" or the first argument starting with "-".
func splitArgs(a []string) (pkgs, extra []string) {
	for i, s := range a {
		if s == "--" {
			pkgs, extra = a[:i], a[i+1:]
			break
		}
		if strings.HasPrefix(s, "-") {
			pkgs, extra = a[:i], a[i:]
			break
		}
		pkgs = a[:i+1]
	}
	if len(pkgs) == 0 {
		pkgs = []string{"./..."}
	}
	return pkgs, extra
}

func run(n int, args []string, ci bool) int {
	failures := map[string]int{}
	failedRuns := 0
	var last result
	for i := 1; i <= n; i++ {
		if n > 1 {
			fmt.Printf("=== run %d of %d: go %s\n", i, n, strings.Join(args, " "))
		}
		start := time.Now()
		r, err := once(args, os.Stdout)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testrun:", err)
			return 1
		}
		for _, f := range r.failed {
			failures[f]++
		}
		if !r.ok {
			failedRuns++
		}
		if n > 1 {
			fmt.Printf("=== run %d of %d: %s in %v\n", i, n, verdict(r.ok), time.Since(start).Round(time.Second))
		}
		last = r
	}
	ok := failedRuns == 0
	if len(last.skipped) > 0 {
		fmt.Printf("\nSKIPPED (%d):\n", len(last.skipped))
		for _, k := range slices.Sorted(mapKeys(last.skipped)) {
			fmt.Printf("  %s: %s\n", k, last.skipped[k])
		}
		if ci {
			fmt.Println("CI=true: a skipped test is a failure (every tool must be installed)")
			ok = false
		}
	} else {
		fmt.Println("\nSKIPPED: none")
	}
	if n > 1 {
		fmt.Printf("\n%d of %d runs failed\n", failedRuns, n)
		for _, k := range slices.Sorted(mapKeys(failures)) {
			fmt.Printf("  %3d/%d  %s\n", failures[k], n, k)
		}
	}
	if !ok {
		return 1
	}
	return 0
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// once runs go test one time, printing package lines and failures to w.
func once(args []string, w io.Writer) (result, error) {
	cmd := exec.Command("go", args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return result{}, err
	}
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	r := summarize(out, w)
	werr := cmd.Wait()
	if _, isExit := werr.(*exec.ExitError); werr != nil && !isExit {
		return r, werr
	}
	r.ok = r.ok && werr == nil
	return r, nil
}

// summarize reads a go test -json stream and reports what it found.
func summarize(in io.Reader, w io.Writer) result {
	r := result{skipped: map[string]string{}, ok: true}
	outputs := map[string][]string{} // "pkg Test" or "pkg" → lines
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fmt.Fprintln(w, sc.Text()) // not JSON: pass it through
			continue
		}
		pkg := e.Package
		if pkg == "" {
			pkg = e.ImportPath
		}
		key := pkg
		if e.Test != "" {
			key = pkg + " " + e.Test
		}
		switch e.Action {
		case "output", "build-output":
			if len(outputs[key]) < maxOutputLines {
				outputs[key] = append(outputs[key], e.Output)
			}
		case "skip":
			if e.Test != "" {
				r.skipped[key] = skipReason(outputs[key])
			}
			delete(outputs, key)
		case "pass":
			delete(outputs, key)
			if e.Test == "" {
				fmt.Fprintf(w, "ok  \t%s\t%.3fs\n", pkg, e.Elapsed)
			}
		case "fail", "build-fail":
			r.ok = false
			if e.Test != "" {
				r.failed = append(r.failed, key)
				fmt.Fprintf(w, "--- FAIL: %s (%.2fs)\n%s", key, e.Elapsed, strings.Join(outputs[key], ""))
				delete(outputs, key)
				continue
			}
			if lines := outputs[key]; len(lines) > 0 {
				fmt.Fprint(w, strings.Join(lines, ""))
			}
			delete(outputs, key)
			fmt.Fprintf(w, "FAIL\t%s\t%.3fs\n", pkg, e.Elapsed)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(w, "testrun: reading go test output:", err)
		r.ok = false
	}
	return r
}

// skipReason is the message a skipped test logged, without go test's
// framing lines.
func skipReason(lines []string) string {
	var kept []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		kept = append(kept, t)
	}
	if len(kept) == 0 {
		return "(no reason given)"
	}
	return strings.Join(kept, " | ")
}

// Command healthcheck asks an HTTP URL whether a service is up and exits 0
// when it answers 2xx, 1 otherwise. It exists for container healthchecks in
// the distroless image, which has no shell, curl or wget:
//
//	healthcheck http://127.0.0.1:8080/readyz
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/tether-dev/tether/internal/cli"
)

// DefaultTimeout bounds the whole request.
const DefaultTimeout = 3 * time.Second

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run checks the URL in args and returns the exit code: 0 up, 1 not up,
// 2 usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.Describe(fs, `healthcheck: asks an HTTP URL whether a service is up, for container healthchecks in Tether's
distroless image (no shell, curl or wget there). It GETs the URL and exits 0 when the answer is
2xx, 1 on any other status, a timeout or no answer, printing the status and the start of the
body. The supervisor's /readyz is 200 when it is ready and 503 with the reason when not.`, `
healthcheck http://127.0.0.1:8080/readyz
healthcheck --timeout 1s http://127.0.0.1:8080/healthz`, "healthcheck [--timeout D] URL")
	timeout := fs.Duration("timeout", DefaultTimeout, "bound on the whole request")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 || *timeout <= 0 {
		fmt.Fprintln(stderr, "healthcheck: want one URL and a positive --timeout; usage: healthcheck [--timeout D] URL")
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := check(ctx, fs.Arg(0), stdout); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// check GETs url and reports an error unless it answers 2xx.
func check(ctx context.Context, url string, out io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	line := fmt.Sprintf("%s: %s %s", url, resp.Status, strings.TrimSpace(string(body)))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("healthcheck: %s", line)
	}
	fmt.Fprintln(out, line)
	return nil
}

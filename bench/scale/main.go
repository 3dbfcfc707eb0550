// Command scale measures one cbproxy node serving many services (issue 11,
// item 3): it generates a Caddyfile of -services services of three pools of
// two backends each, all behind one site with a path matcher per service,
// starts one cbproxy-backend process serving the backend addresses and the
// real cbproxy binary, and measures the time from the start until every
// service answers through the proxy, the process's resident memory after
// the start and over -scrapes scrapes of /metrics, the size and series count
// of /metrics, and the latency of GET /v1/services. The routing-table rebuild
// of one changed service is a Go benchmark in proxymod
// (BenchmarkRebuildOneService), run by bench/scale.sh. bench/README.md
// explains the figures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cbproxy/cbproxy/bench/internal/benchrun"
)

// settings are the command line flags.
type settings struct {
	cbproxy, backend string
	services         int // services in the Caddyfile
	addresses        int // distinct backend addresses the backend process listens on
	scrapes          int // scrapes of /metrics
	calls            int // GET /v1/services calls
	portBase         int
	resultsDir       string
	command          string
	rebuild          string // the output of the rebuild benchmark, if run
	timeout          time.Duration
}

func main() {
	s, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = run(ctx, s)
	switch {
	case ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		fmt.Fprintln(os.Stderr, "scale: interrupted; every process it started is stopped")
		os.Exit(130)
	case err != nil:
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

// maxAddresses bounds the backend addresses: one cbproxy-backend process
// listens on all of them.
const maxAddresses = 600

func parseFlags(args []string) (settings, error) {
	var s settings
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	fs.StringVar(&s.cbproxy, "cbproxy", "bin/cbproxy", "the cbproxy binary under test")
	fs.StringVar(&s.backend, "backend", "bin/cbproxy-backend", "the cbproxy-backend binary")
	fs.IntVar(&s.services, "services", 1000, "services, each of 3 pools of 2 backends")
	fs.IntVar(&s.addresses, "addresses", 6, "distinct backend addresses (ports on 127.0.0.1) the services' backends are spread over")
	fs.IntVar(&s.scrapes, "scrapes", 40, "scrapes of /metrics")
	fs.IntVar(&s.calls, "calls", 50, "GET /v1/services calls")
	fs.IntVar(&s.portBase, "port-base", 7700, "loopback ports: base+1 cluster, +2 admin API, +3 proxy, +4 Caddy admin, +11… backends")
	fs.StringVar(&s.resultsDir, "results", "bench/results", "directory of the result file")
	fs.StringVar(&s.command, "command", "", "the command line to record in the result file")
	fs.StringVar(&s.rebuild, "rebuild-bench", "", "file holding the output of the rebuild Go benchmark, quoted in the result file")
	fs.DurationVar(&s.timeout, "timeout", 150*time.Second, "bound on the whole run")
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	switch {
	case fs.NArg() > 0:
		return s, fmt.Errorf("unexpected argument %q: every setting is a flag", fs.Arg(0))
	case s.services < 1 || s.services > 10000:
		return s, fmt.Errorf("-services %d: want 1 to 10000", s.services)
	case s.addresses < 1 || s.addresses > maxAddresses:
		return s, fmt.Errorf("-addresses %d: want 1 to %d", s.addresses, maxAddresses)
	case s.scrapes < 1 || s.calls < 1:
		return s, fmt.Errorf("-scrapes %d, -calls %d: want at least 1 each", s.scrapes, s.calls)
	case s.portBase < 1024 || s.portBase+10+s.addresses > 65535:
		return s, fmt.Errorf("-port-base %d: want 1024 to %d (the run uses base+1 to base+%d)", s.portBase, 65535-10-s.addresses, 10+s.addresses)
	case s.timeout <= 0:
		return s, fmt.Errorf("-timeout %s: want a positive duration", s.timeout)
	}
	if s.command == "" {
		s.command = strings.Join(append([]string{"scale"}, args...), " ")
	}
	return s, nil
}

// run starts the backend and the node, measures, reports, and stops every
// process it started, whatever happens.
func run(ctx context.Context, s settings) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	m := benchrun.DescribeMachine(s.cbproxy)
	if m.Busy > busyWarning {
		fmt.Fprintf(os.Stderr, "scale: warning: the CPUs were %d %% busy with other work before the run: times will be longer and noisier\n", m.Busy)
	}
	n, err := startNode(ctx, s)
	if n != nil {
		defer n.stop()
	}
	if err != nil {
		return err
	}
	rep := &report{s: s, machine: m}
	if err := n.measure(ctx, rep); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("the run took longer than -timeout %s: %w", s.timeout, err)
		}
		return err
	}
	if err := n.alive(); err != nil {
		return err
	}
	if s.rebuild != "" {
		b, err := os.ReadFile(s.rebuild)
		if err != nil {
			return err
		}
		rep.rebuild = parseRebuild(string(b))
	}
	rep.print(os.Stdout)
	path, err := rep.write(s.resultsDir)
	if err != nil {
		return err
	}
	fmt.Println("wrote", path)
	return nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

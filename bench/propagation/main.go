// Command propagation measures how fast a weight change reaches every node of
// a cbproxy cluster. It starts a local three-node cluster on loopback (three
// cbproxy processes and one cbproxy-backend process serving the pools blue and
// canary), sends weight changes one after the other to a follower with
// ?wait=all, and measures each call: it returns only after every node applied
// the change. Meanwhile a fixed-rate load of keep-alive GETs over the three
// nodes' proxy ports counts failed requests, and answers from the old pool
// after a call had returned. With -nodes 1 it does the same with a single
// node and a plain PUT (answered once that node's data plane switched).
// Before the changes it measures the CPU the idle nodes use.
// bench/propagation.sh builds and runs it; bench/README.md explains the
// figures.
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
	cbproxy    string        // the cbproxy binary under test
	backend    string        // the cbproxy-backend binary
	nodes      int           // 3: a cluster, changes to a follower with ?wait=all; 1: one node, plain PUTs
	idle       time.Duration // how long the idle nodes' CPU is measured (0: not)
	changes    int           // measured weight changes
	warmup     int           // unmeasured changes before them
	gap        time.Duration // pause after each change
	rate       int           // background load, requests per second over all nodes
	portBase   int           // first of the loopback ports used (see ports)
	resultsDir string        // where the result file goes
	command    string        // how the run was started, for the result file
	timeout    time.Duration // the whole run
}

func main() {
	s, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "propagation:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = run(ctx, s)
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(os.Stderr, "propagation: interrupted; every process it started is stopped")
		os.Exit(130)
	case err != nil:
		fmt.Fprintln(os.Stderr, "propagation:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (settings, error) {
	var s settings
	fs := flag.NewFlagSet("propagation", flag.ContinueOnError)
	fs.StringVar(&s.cbproxy, "cbproxy", "bin/cbproxy", "the cbproxy binary under test")
	fs.StringVar(&s.backend, "backend", "bin/cbproxy-backend", "the cbproxy-backend binary")
	fs.IntVar(&s.nodes, "nodes", 3, "3: a cluster, changes sent to a follower with ?wait=all; 1: a single node, plain PUTs")
	fs.DurationVar(&s.idle, "idle", 5*time.Second, "how long to measure the CPU of the idle nodes before the changes (0: not)")
	fs.IntVar(&s.changes, "changes", 200, "measured weight changes")
	fs.IntVar(&s.warmup, "warmup", 4, "unmeasured weight changes before the measured ones")
	fs.DurationVar(&s.gap, "gap", 50*time.Millisecond, "pause after each change")
	fs.IntVar(&s.rate, "rate", 1000, "background load in requests per second over the nodes (0: none)")
	fs.IntVar(&s.portBase, "port-base", 7400, "loopback ports used: base+1..3 cluster, +11..13 admin API, +21..23 proxy, +31..33 Caddy admin, +41..42 backends")
	fs.StringVar(&s.resultsDir, "results", "bench/results", "directory of the result file")
	fs.StringVar(&s.command, "command", "", "the command line to record in the result file")
	fs.DurationVar(&s.timeout, "timeout", 170*time.Second, "bound on the whole run")
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	switch {
	case fs.NArg() > 0:
		return s, fmt.Errorf("unexpected argument %q: every setting is a flag", fs.Arg(0))
	case s.nodes != 1 && s.nodes != 3:
		return s, fmt.Errorf("-nodes %d: want 3 (a cluster) or 1 (a single node)", s.nodes)
	case s.idle < 0:
		return s, fmt.Errorf("-idle %s: want a duration of 0 or more, e.g. 5s", s.idle)
	case s.changes < 1:
		return s, fmt.Errorf("-changes %d: want at least 1 change", s.changes)
	case s.warmup < 0 || s.warmup%2 != 0:
		return s, fmt.Errorf("-warmup %d: want an even number (0, 2, 4…) so the measured changes start from blue", s.warmup)
	case s.gap < 0:
		return s, fmt.Errorf("-gap %s: want a duration of 0 or more, e.g. 50ms", s.gap)
	case s.rate < 0 || s.rate > 20000:
		return s, fmt.Errorf("-rate %d: want 0 to 20000 requests per second", s.rate)
	case s.portBase < 1024 || s.portBase+42 > 65535:
		return s, fmt.Errorf("-port-base %d: want 1024 to 65493 (the run uses base+1 to base+42)", s.portBase)
	case s.timeout <= 0:
		return s, fmt.Errorf("-timeout %s: want a positive duration, e.g. 3m", s.timeout)
	}
	if s.command == "" {
		s.command = strings.Join(append([]string{"propagation"}, args...), " ")
	}
	return s, nil
}

// run starts the cluster, measures, reports, and stops every process it
// started, whatever happens.
func run(ctx context.Context, s settings) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	machine := benchrun.DescribeMachine(s.cbproxy)
	if machine.Busy > busyWarning {
		fmt.Fprintf(os.Stderr, "propagation: warning: the CPUs were %d %% busy with other work before the run: p99 and max will be longer and noisier\n", machine.Busy)
	}

	c, err := startCluster(s)
	if c != nil {
		defer c.stop()
	}
	if err != nil {
		return err
	}
	if err := c.waitReady(ctx, 30*time.Second); err != nil {
		return err
	}
	follower, err := c.follower(ctx)
	if err != nil {
		return err
	}
	var idle *idleCPU
	if s.idle > 0 {
		if idle, err = c.measureIdle(ctx, s.idle); err != nil {
			return err
		}
	}
	if s.nodes == 1 {
		fmt.Printf("node ready; sending %d changes (after %d warm-up changes) to %s, %s apart; load %d req/s\n",
			s.changes, s.warmup, follower.admin, s.gap, s.rate)
	} else {
		fmt.Printf("cluster ready: leader %s; sending %d changes (after %d warm-up changes) to follower %s at %s with ?wait=all, %s apart; load %d req/s\n",
			c.leader, s.changes, s.warmup, follower.id, follower.admin, s.gap, s.rate)
	}

	for i := range s.warmup {
		if ch := c.change(ctx, follower, targets[i%2]); ch.problem() != "" {
			return fmt.Errorf("warm-up change %d to %s: %s", i+1, follower.id, ch.problem())
		}
	}

	var ld *load
	if s.rate > 0 {
		ld = startLoad(c.proxyURLs(), s.rate)
		sleep(ctx, loadMargin) // the load's connections are open before the first change
	}
	changes := make([]change, 0, s.changes)
	for i := 0; i < s.changes && ctx.Err() == nil; i++ {
		changes = append(changes, c.change(ctx, follower, targets[i%2]))
		sleep(ctx, s.gap)
	}
	var lr loadResult
	if ld != nil {
		sleep(ctx, loadMargin)
		lr = ld.stop()
	}
	if err := ctx.Err(); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("the run took longer than -timeout %s (%d of %d changes made): use fewer -changes or a shorter -gap", s.timeout, len(changes), s.changes)
		}
		return err
	}
	if err := c.alive(); err != nil {
		return err
	}

	rep := analyze(s, machine, follower.id, changes, lr)
	rep.idle = idle
	rep.print(os.Stdout)
	path, err := rep.write(s.resultsDir)
	if err != nil {
		return err
	}
	fmt.Println("wrote", path)
	if why := rep.invalid(); why != "" {
		return fmt.Errorf("the figures are not valid: %s (see %s)", why, path)
	}
	return nil
}

// loadMargin is how long the load runs before the first and after the last
// change.
const loadMargin = 500 * time.Millisecond

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

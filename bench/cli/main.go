// Command cli measures how long the cbproxy client commands take, start to
// exit, against a running single node: each command is run RUNS times, one
// after the other, and its median, p90 and fastest run are printed next to the
// goal (a median of at most 50 ms). It then runs one command with
// GODEBUG=inittrace=1 to say how much of that is the initialisation of the
// packages linked into the binary, and which ones cost most; then, with
// SERVICES services on the node, the commands whose answers grow with them.
// See bench/README.md ("cli").
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cbproxy/cbproxy/bench/internal/benchrun"
)

// goal is the bound on a command that only talks to the API.
const goal = 50 * time.Millisecond

func main() {
	bin := flag.String("bin", "bin/cbproxy", "the cbproxy binary")
	runs := flag.Int("runs", 50, "runs of each command")
	services := flag.Int("services", 1000, "services of the second pass (0: none)")
	portBase := flag.Int("port-base", 7800, "the node's ports are port-base+1 to +4")
	flag.Parse()
	if err := run(*bin, *runs, *services, *portBase); err != nil {
		fmt.Fprintln(os.Stderr, "bench cli:", err)
		os.Exit(1)
	}
}

// commands are the measured command lines: reads, a write and the
// two-call status.
var commands = [][]string{
	{"cluster", "status"},
	{"status", "demo"},
	{"status"},
	{"events", "--limit", "10"},
	{"weights", "demo", "blue=100"},
	{"status", "--json"},
}

func run(bin string, runs, services, base int) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	machine := benchrun.DescribeMachine(bin)
	dir, err := os.MkdirTemp("", "cbproxy-bench-cli")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	admin := fmt.Sprintf("127.0.0.1:%d", base+2)
	caddyfile := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(caddyfile, []byte(fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	cbproxy {
		node_id        bench
		data_dir       %s
		cluster_listen 127.0.0.1:%d
		admin_listen   %s
		bootstrap
	}
}

http://127.0.0.1:%d {
	cbproxy demo {
		pool blue   127.0.0.1:9
		pool canary 127.0.0.1:9
		weights blue=100
	}
}
`, base+4, filepath.Join(dir, "data"), base+1, admin, base+3)), 0o600); err != nil {
		return err
	}
	node, err := benchrun.Start(dir, "cbproxy", os.Environ(), bin, "run", "--config", caddyfile, "--adapter", "caddyfile")
	if err != nil {
		return err
	}
	defer benchrun.Stop(node)
	if err := waitReady(node, "http://"+admin+"/health/ready"); err != nil {
		return err
	}
	env := append(os.Environ(), "CBPROXY_ADMIN="+admin)

	fmt.Printf("cbproxy CLI start to exit, %d runs each, against one node on loopback\n", runs)
	fmt.Printf("machine: %d CPUs, %s, %s; %d %% busy with other work before the run\n", machine.CPUs, machine.Model, machine.Kernel, machine.Busy)
	fmt.Printf("binary: %s (%s, git %s)\n\n", bin, machine.Version, machine.GitHead)
	fmt.Printf("%-28s %8s %8s %8s  %s\n", "command", "median", "p90", "fastest", "goal ≤ "+goal.String()+" median")
	failed := false
	for _, args := range commands {
		median, err := measure(bin, env, args, runs, true)
		if err != nil {
			return err
		}
		failed = failed || median > goal
	}
	if err := initCost(bin, env); err != nil {
		return err
	}
	if services > 1 {
		// The same commands where the answers are large: the list of 1,000
		// services is about a megabyte (no goal: the is for the
		// single service).
		if err := addServices(admin, services-1); err != nil {
			return err
		}
		fmt.Printf("\nwith %d services:\n%-28s %8s %8s %8s\n", services, "command", "median", "p90", "fastest")
		for _, args := range [][]string{{"status"}, {"status", "--json"}, {"status", "s0500"}, {"events", "--limit", "1000"}, {"cluster", "status"}} {
			if _, err := measure(bin, env, args, runs, false); err != nil {
				return err
			}
		}
	}
	if failed {
		return errors.New("a median is over the goal")
	}
	return nil
}

// measure runs a command runs times and prints its median, p90 and fastest
// run (and the verdict against the goal, if judged).
func measure(bin string, env, args []string, runs int, judged bool) (time.Duration, error) {
	times := make([]time.Duration, 0, runs)
	for range runs {
		took, err := timeRun(bin, env, args)
		if err != nil {
			return 0, fmt.Errorf("cbproxy %s: %w", strings.Join(args, " "), err)
		}
		times = append(times, took)
	}
	slices.Sort(times)
	median := times[len(times)/2]
	verdict := ""
	if judged {
		verdict = "ok"
		if median > goal {
			verdict = "OVER"
		}
	}
	fmt.Printf("%-28s %8s %8s %8s  %s\n", strings.Join(args, " "), ms(median), ms(times[len(times)*9/10]), ms(times[0]), verdict)
	return median, nil
}

// addServices creates n services s0001…, three pools of two backends each, as
// the scale bench's.
func addServices(admin string, n int) error {
	c := &http.Client{Timeout: 10 * time.Second}
	for i := 1; i <= n; i++ {
		body := `{"pools":{"blue":{"backends":["127.0.0.1:9","127.0.0.2:9"]},"green":{"backends":["127.0.0.3:9","127.0.0.4:9"]},` +
			`"canary":{"backends":["127.0.0.5:9","127.0.0.6:9"]}},"weights":{"blue":100}}`
		req, err := http.NewRequest(http.MethodPut, fmt.Sprintf("http://%s/v1/services/s%04d", admin, i), strings.NewReader(body))
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("creating service s%04d: %s", i, resp.Status)
		}
	}
	return nil
}

// timeRun runs the binary once and returns how long it took, start to exit.
func timeRun(bin string, env, args []string) (time.Duration, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Stderr = env, &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, stderr.String())
	}
	return took, nil
}

// initCost runs one command with GODEBUG=inittrace=1 and prints the total
// initialisation time of the linked packages and the costliest ones.
func initCost(bin string, env []string) error {
	cmd := exec.Command(bin, "cluster", "status")
	cmd.Env = append(env, "GODEBUG=inittrace=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cbproxy cluster status with inittrace: %v", err)
	}
	took := time.Since(start)
	type pkgInit struct {
		name string
		ms   float64
	}
	var inits []pkgInit
	var total float64
	// init github.com/alecthomas/chroma/v2/lexers @19 ms, 6.9 ms clock, 3893864 bytes, 40167 allocs
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 7 || f[0] != "init" || f[6] != "clock," {
			continue
		}
		v, err := strconv.ParseFloat(f[4], 64)
		if err != nil {
			continue
		}
		inits = append(inits, pkgInit{f[1], v})
		total += v
	}
	slices.SortFunc(inits, func(a, b pkgInit) int { return cmp.Compare(b.ms, a.ms) })
	fmt.Printf("\none run of 'cluster status' with GODEBUG=inittrace=1: %s in all, %.1f ms initialising %d packages; the costliest:\n", ms(took), total, len(inits))
	for _, p := range inits[:min(6, len(inits))] {
		fmt.Printf("  %5.1f ms  %s\n", p.ms, p.name)
	}
	return nil
}

func waitReady(node *benchrun.Proc, url string) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if err := benchrun.Alive(node); err != nil {
			return err
		}
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the node was not ready within 60 s; %s", node.Tail())
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + "ms"
}

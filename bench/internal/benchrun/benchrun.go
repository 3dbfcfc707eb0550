// Package benchrun holds what the benchmark programs under bench share: the
// description of the machine a run happened on, and the processes a run
// starts.
package benchrun

import (
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Machine describes where a run happened.
type Machine struct {
	CPUs                            int
	Model, Kernel, Version, GitHead string
	Busy                            int // % of CPU time busy with other work just before the run
}

// DescribeMachine reads the machine's description, the cbproxy binary's
// version and the git HEAD, and, over one second, how busy the CPUs are
// with other work.
func DescribeMachine(cbproxy string) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Model: "unknown CPU", Kernel: runtime.GOOS, Version: "unknown", GitHead: "unknown"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.Model = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	if out, err := exec.Command(cbproxy, "version").Output(); err == nil {
		m.Version, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		m.GitHead = strings.TrimSpace(string(out))
		if out, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(out) > 0 {
			m.GitHead += " with uncommitted changes"
		}
	}
	busy0, total0 := cpuTimes()
	time.Sleep(time.Second)
	busy1, total1 := cpuTimes()
	if total1 > total0 {
		m.Busy = int(math.Round(100 * float64(busy1-busy0) / float64(total1-total0)))
	}
	return m
}

// cpuTimes reads the busy and total CPU time of the machine from /proc/stat,
// in clock ticks; zeros where there is none.
func cpuTimes() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 9 {
		return 0, 0
	}
	// user nice system idle iowait irq softirq steal; guest time is already
	// counted in user and nice.
	for i, f := range fields[1:9] {
		var v uint64
		fmt.Sscan(f, &v)
		total += v
		if i != 3 && i != 4 { // idle and iowait
			busy += v
		}
	}
	return busy, total
}

// Proc is one process a run started.
type Proc struct {
	Name string
	Log  string // the file its output goes to
	Cmd  *exec.Cmd
	Done chan struct{} // closed once the process has exited
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.Done:
		return true
	default:
		return false
	}
}

// Tail is the end of the process's log, for error messages.
func (p *Proc) Tail() string {
	b, _ := os.ReadFile(p.Log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "the end of " + p.Name + "'s log:\n\t" + strings.Join(lines, "\n\t")
}

// Start runs bin with args and env, its output in dir/name.log.
func Start(dir, name string, env []string, bin string, args ...string) (*Proc, error) {
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	defer log.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: log.Name(), Cmd: cmd, Done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.Done)
	}()
	return p, nil
}

// Stop ends the processes politely (SIGTERM), and after 5 s for sure.
func Stop(ps ...*Proc) {
	for _, p := range ps {
		p.Cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(5 * time.Second)
	for _, p := range ps {
		select {
		case <-p.Done:
		case <-deadline:
			p.Cmd.Process.Kill()
			<-p.Done
		}
	}
}

// Alive fails, with the end of its log, if one of the processes has exited.
func Alive(ps ...*Proc) error {
	for _, p := range ps {
		if p.Exited() {
			return fmt.Errorf("%s exited (%v); %s", p.Name, p.Cmd.ProcessState, p.Tail())
		}
	}
	return nil
}

// Preflight checks, before a run starts anything, that every port is free
// on 127.0.0.1 and that every binary can be run; the errors say what to do.
func Preflight(ports []int, bins ...string) error {
	for _, p := range ports {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return fmt.Errorf("port %d on 127.0.0.1 is in use (the run needs %d ports from %d to %d): set PORT_BASE to another range",
				p, len(ports), slices.Min(ports), slices.Max(ports))
		}
		ln.Close()
	}
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("no executable %s: run 'make build' first", bin)
		}
	}
	return nil
}

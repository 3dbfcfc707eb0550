// Command cbproxy-backend serves several named HTTP test backends from one
// process: the demo (make run), the e2e tests and the benchmarks use it as the
// blue, green and canary deployments behind cbproxy.
//
//	cbproxy-backend -backends blue=127.0.0.1:9001,green=127.0.0.1:9002,canary=127.0.0.1:9003 \
//		-version blue=v1.4.1,canary=v1.5.0-rc1
//
// Every backend answers any path with 200, a small JSON body naming itself and
// the header X-Backend. GET /health/ready reports its configured health, and
// GET/PUT /_backend reads or changes its error rate, error status, added
// latency and health at run time; GET /_backend/stats counts what it served.
// For long-lived connections, /_backend/ws is a WebSocket that echoes every
// message, and GET /_backend/events an event stream (text/event-stream) with
// an event naming the backend every second.
// The -error-rate, -error-status, -latency-ms and -health flags set the
// starting values for every backend.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// shutdownTimeout bounds how long a stop waits for requests in flight (some
// may be sleeping for their configured latency).
const shutdownTimeout = 5 * time.Second

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "cbproxy-backend:", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "cbproxy-backend:", err)
		os.Exit(1)
	}
}

func run(cfg config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	f, err := start(cfg)
	if err != nil {
		return err
	}
	for _, b := range f.backends {
		fmt.Fprintf(os.Stderr, "cbproxy-backend: %s (version %q) listening on %s\n", b.name, b.version, b.addr)
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-f.errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	return errors.Join(serveErr, f.shutdown(sctx))
}

// config is the parsed command line.
type config struct {
	backends []namedValue // name and listen address, in flag order
	versions map[string]string
	initial  settings
}

type namedValue struct{ name, value string }

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("cbproxy-backend", flag.ContinueOnError)
	backends := fs.String("backends", "", "backends to serve: `name=host:port,...` (required)")
	versions := fs.String("version", "", "version labels: `name=label,...` (optional)")
	var initial settings
	fs.Float64Var(&initial.ErrorRate, "error-rate", 0, "fraction of requests that fail, 0 to 1 (deterministic: 0.05 fails every 20th)")
	fs.IntVar(&initial.ErrorStatus, "error-status", 500, "status code of a failed request, 400 to 599")
	fs.IntVar(&initial.LatencyMS, "latency-ms", 0, "milliseconds added to every request")
	fs.StringVar(&initial.Health, "health", "ok", "what /health/ready reports: ok, degraded or unhealthy")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q: all settings are flags", fs.Arg(0))
	}
	if *backends == "" {
		return config{}, errors.New("-backends is required, e.g. -backends blue=127.0.0.1:9001,green=127.0.0.1:9002")
	}

	cfg := config{versions: map[string]string{}, initial: initial}
	var err error
	if cfg.backends, err = parseList(*backends); err != nil {
		return config{}, fmt.Errorf("-backends: %w", err)
	}
	for _, b := range cfg.backends {
		if _, _, err := net.SplitHostPort(b.value); err != nil {
			return config{}, fmt.Errorf("-backends: address of %s: %w (want host:port)", b.name, err)
		}
	}
	if *versions != "" {
		vs, err := parseList(*versions)
		if err != nil {
			return config{}, fmt.Errorf("-version: %w", err)
		}
		for _, v := range vs {
			if !listed(cfg.backends, v.name) {
				return config{}, fmt.Errorf("-version: %s is not one of the -backends", v.name)
			}
			cfg.versions[v.name] = v.value
		}
	}
	if err := cfg.initial.validate(); err != nil {
		return config{}, err
	}
	return cfg, nil
}

// listed says whether list has an entry called name.
func listed(list []namedValue, name string) bool {
	for _, nv := range list {
		if nv.name == name {
			return true
		}
	}
	return false
}

// validName is the contract's pool name syntax; a backend usually stands for a
// pool, and its name goes into a header and JSON without escaping.
var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// parseList parses "name=value,name=value" with unique, valid names and
// non-empty values.
func parseList(s string) ([]namedValue, error) {
	var out []namedValue
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		name, value, ok := strings.Cut(item, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		switch {
		case !ok:
			return nil, fmt.Errorf("%q is not name=value", item)
		case !validName.MatchString(name):
			return nil, fmt.Errorf("name %q must be 1-32 of a-z, 0-9, '_' and '-', starting with a letter or digit", name)
		case value == "":
			return nil, fmt.Errorf("%s has an empty value", name)
		case listed(out, name):
			return nil, fmt.Errorf("%s is listed twice", name)
		}
		out = append(out, namedValue{name, value})
	}
	return out, nil
}

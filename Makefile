# cbproxy — everything a developer or CI runs. See README.md.
SHELL := /bin/bash
# A piped test (soak, bench-rollback) fails the target when the test fails.
.SHELLFLAGS := -o pipefail -c
GO    ?= go
BIN   := bin
PKGS  := ./...
FUZZTIME ?= 30s
# Minimizing a new input may take Go's default 60 s, longer than a short
# FUZZTIME: some targets (FuzzApply) would spend their whole run on it.
FUZZMINTIME ?= 5s

.PHONY: all build run run-cluster test tools vet lint promtool unit e2e bench bench-go bench-propagation bench-apply bench-rollback bench-scale bench-cli soak fuzz clean

all: build

build:
	$(GO) build -o $(BIN)/cbproxy ./cmd/cbproxy
	$(GO) build -o $(BIN)/cbproxy-backend ./cmd/cbproxy-backend

# A single-node demo on embedded defaults: three demo backends on
# 127.0.0.1:9001-9003, the proxy on :8080, the admin API on 127.0.0.1:7101.
run: build
	./configs/demo.sh

# A local three-node cluster: backends on 127.0.0.1:9001-9003, proxies on
# :8081-8083, admin APIs on 127.0.0.1:7101-7103 (configs/cluster/README.md).
run-cluster: build
	./configs/cluster/run.sh

# Everything CI checks (.ci/run calls this and nothing else).
test: tools vet lint promtool unit e2e

# The Debian packages make test needs, installed in one apt-get run when any
# is missing (nothing to do when all are there): chromium for the web
# console's e2e test (TestConsole), prometheus for promtool (the alert
# rules' checks and unit tests), systemd for systemd-analyze (TestSystemdUnit
# verifies configs/systemd/cbproxy.service).
tools:
	@missing=; \
	  { [ -x /usr/bin/chromium ] || command -v chromium >/dev/null; } || missing="$$missing chromium"; \
	  command -v promtool >/dev/null || missing="$$missing prometheus"; \
	  command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	  [ -z "$$missing" ] && exit 0; \
	  echo "installing Debian packages:$$missing"; \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing

vet:
	@fmt=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$fmt" ]; then echo "gofmt needed: $$fmt"; exit 1; fi
	$(GO) vet $(PKGS)

# staticcheck, pinned, fetched through the Go module proxy on first use
# (exceptions go in staticcheck.conf, each with its reason); go.mod and
# go.sum as `go mod tidy` would leave them; and make's own shell failing a
# pipe whose first command fails, which the piped targets (soak,
# bench-rollback) rely on.
STATICCHECK_VERSION := v0.8.2
lint:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) $(PKGS)
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum drifted from the imports: run go mod tidy"; exit 1; }
	@if false | cat; then echo "make's shell does not fail a failing pipe: a piped test would pass on failure"; exit 1; fi

# The Prometheus alert rules and their unit tests, and the example scrape
# config (configs/prometheus). promtool comes from Debian's prometheus
# package (make tools).
promtool: tools
	promtool check rules configs/prometheus/alerts.yml
	promtool test rules configs/prometheus/alerts_test.yml
	promtool check config configs/prometheus/prometheus.yml

# Unit and in-process tests (real Raft on disk, real TCP on loopback), with
# the race detector. Fuzz targets run their seed corpora here.
unit:
	$(GO) test -race -timeout 10m $$($(GO) list ./... | grep -v /e2e)

# End-to-end tests drive the real binary (built by the test itself, so Go's
# test cache cannot see a change of the code under test: -count=1).
e2e: tools
	$(GO) test -count=1 -timeout 10m ./e2e/...

# Speed: Go benchmarks of the hot path, then the side-by-side A/B against
# plain Caddy reverse_proxy in the same binary (bench/README.md).
bench: build bench-go bench-propagation bench-apply bench-rollback bench-scale bench-cli
	CBPROXY_BIN=$(BIN)/cbproxy BACKEND_BIN=$(BIN)/cbproxy-backend ./bench/proxy-ab.sh

# How fast a weight change reaches every node of a local three-node cluster,
# and failed requests per switch (bench/README.md).
bench-propagation: build
	CBPROXY_BIN=$(BIN)/cbproxy BACKEND_BIN=$(BIN)/cbproxy-backend ./bench/propagation.sh

# How fast a single node applies a weight change sent to its API: 200
# sequential PUTs, p50/p99 (bench/README.md).
bench-apply: build
	NODES=1 CBPROXY_BIN=$(BIN)/cbproxy BACKEND_BIN=$(BIN)/cbproxy-backend ./bench/propagation.sh

# One node with 1,000 services (3 pools x 2 backends, one site with path
# matchers, seeded from the Caddyfile): time until every service serves, RSS
# over /metrics scrapes, /metrics size, GET /v1/services, and the routing-table
# rebuild of one change (bench/README.md).
bench-scale: build
	CBPROXY_BIN=$(BIN)/cbproxy BACKEND_BIN=$(BIN)/cbproxy-backend ./bench/scale.sh

# How long a CLI command takes, start to exit, against one node: the median
# of RUNS runs of each of a few commands next to the 50 ms goal, and what the
# initialisation of the linked packages costs; then the same with SERVICES
# services, where the answers are a megabyte (bench/README.md).
RUNS ?= 50
SERVICES ?= 1000
bench-cli: build
	$(GO) run ./bench/cli -bin $(BIN)/cbproxy -runs $(RUNS) -services $(SERVICES)

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -count 3 ./proxymod/

# Time to rollback: a canary at 5 % of ~400 req/s over a real three-node
# cluster starts failing every request; 10 trials, from the onset until every
# node applied the rollback (e2e TestRollbackTrials). Then a dead target: 10
# trials of a switched-to pool whose only backend is killed, 10 of a canary at
# 5 % killed (e2e TestDeadTargetTrials).
bench-rollback: build
	CBPROXY_SOAK=1 $(GO) test -count=1 -timeout 30m -v -run 'TestRollbackTrials|TestDeadTargetTrials' ./e2e/ | grep -E 'rolled back on|time to rollback|^(---|ok|FAIL)'

# Repeated trials the issues ask figures for (not part of make test): leader
# failover of a real three-node cluster 10 times, 20 healthy canary rollouts
# (zero rollbacks expected), and the porcupine linearizability check 20 times.
soak:
	CBPROXY_SOAK=1 $(GO) test -count=1 -timeout 20m -v -run 'TestFailoverTrials' ./e2e/ | grep -E 'trial|failover|^(---|ok|FAIL)'
	CBPROXY_SOAK=1 $(GO) test -count=1 -timeout 30m -v -run 'TestHealthyRolloutRuns' ./e2e/ | grep -E 'run [0-9]|healthy rollouts|^(---|ok|FAIL)'
	$(GO) test -count=20 -timeout 20m -run 'TestClusterLinearizable' ./controlplane/

# Run every native fuzz target for FUZZTIME each (make fuzz FUZZTIME=5m).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINTIME) $$pkg; \
	  done; \
	done

clean:
	rm -rf $(BIN) .demo

# --- Web console (docs/console.md) ---
# Its e2e test (TestConsole) drives Debian's chromium headless (make tools),
# and make test requires it: a missing browser fails the test instead of
# skipping it.
.PHONY: screenshots
e2e: export CBPROXY_REQUIRE_BROWSER := 1

# The console's screenshots in docs/console/, taken by TestConsole itself.
screenshots: tools
	CBPROXY_REQUIRE_BROWSER=1 CBPROXY_SCREENSHOTS=$(CURDIR)/docs/console $(GO) test -count=1 -timeout 10m -run 'TestConsole$$' ./e2e/

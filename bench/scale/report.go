package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cbproxy/cbproxy/bench/internal/benchrun"
)

// The goals of issue 11, item 3.
const (
	goalServing  = time.Second
	goalRSS      = 150 << 20 // bytes
	goalMetrics  = 1 << 20   // bytes
	goalList     = 5 * time.Millisecond
	goalRebuild  = time.Millisecond
	busyWarning  = 25 // % of CPU busy with other work above which figures are marked disturbed
	mib          = float64(1 << 20)
	rebuildBench = "BenchmarkRebuildOneService"
)

type report struct {
	s       settings
	machine benchrun.Machine

	ready, serving   time.Duration // from the start of the process
	rssStart, rssEnd int64
	rssScrapes       []int64 // after each scrape
	metricsBytes     int
	series           int
	scrapeTimes      []time.Duration
	listTimes        []time.Duration
	rebuild          []time.Duration // ns/op of each benchmark run
}

// percentile of a sample (nearest rank); 0 for none.
func percentile(sample []time.Duration, p float64) time.Duration {
	if len(sample) == 0 {
		return 0
	}
	s := slices.Clone(sample)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// rebuildLine matches a line of `go test -bench` output for the rebuild
// benchmark: name, iterations, ns/op, then B/op and allocs/op with -benchmem.
var rebuildLine = regexp.MustCompile(`^` + rebuildBench + `\S*\s+\d+\s+([\d.]+) ns/op(.*)$`)

// parseRebuild reads the ns/op of every run of the rebuild benchmark.
func parseRebuild(out string) []time.Duration {
	var ds []time.Duration
	for line := range strings.Lines(out) {
		if m := rebuildLine.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			ns, err := strconv.ParseFloat(m[1], 64)
			if err == nil {
				ds = append(ds, time.Duration(ns))
			}
		}
	}
	return ds
}

// rows are the figures next to their goals.
func (rep *report) rows() [][4]string {
	maxScrape := slices.Max(rep.rssScrapes)
	rows := [][4]string{
		{"ready: `/health/ready` 200, from the process's start", fmt.Sprintf("%.2f s", rep.ready.Seconds()), "–", ""},
		{"seeded and serving: every service answered 200 by a backend, from the start", fmt.Sprintf("%.2f s", rep.serving.Seconds()), "≤ 1 s", verdict(rep.serving <= goalServing)},
		{"RSS after the start (2 s after serving)", fmt.Sprintf("%.1f MiB", float64(rep.rssStart)/mib), "≤ 150 MiB", verdict(rep.rssStart <= goalRSS)},
		{fmt.Sprintf("RSS, highest over %d scrapes of /metrics", len(rep.rssScrapes)), fmt.Sprintf("%.1f MiB", float64(maxScrape)/mib), "≤ 150 MiB", verdict(maxScrape <= goalRSS)},
		{"RSS at the end (after the scrapes and the list calls, 2 s pause)", fmt.Sprintf("%.1f MiB", float64(rep.rssEnd)/mib), "≤ 150 MiB", verdict(rep.rssEnd <= goalRSS)},
		{"/metrics size", fmt.Sprintf("%.2f MiB (%d bytes)", float64(rep.metricsBytes)/mib, rep.metricsBytes), "≤ 1 MiB", verdict(rep.metricsBytes <= goalMetrics)},
		{"/metrics series (samples)", strconv.Itoa(rep.series), "–", ""},
		{"/metrics scrape time p50 / max", ms(percentile(rep.scrapeTimes, 0.5)) + " / " + ms(percentile(rep.scrapeTimes, 1)) + " ms", "–", ""},
		{fmt.Sprintf("GET /v1/services p50 / p99 (%d calls)", len(rep.listTimes)), ms(percentile(rep.listTimes, 0.5)) + " / " + ms(percentile(rep.listTimes, 0.99)) + " ms", "≤ 5 ms", verdict(percentile(rep.listTimes, 0.5) <= goalList) + " (p50)"},
	}
	if len(rep.rebuild) > 0 {
		med := percentile(rep.rebuild, 0.5)
		rows = append(rows, [4]string{fmt.Sprintf("routing-table rebuild of one changed service among %d (`%s`, median of %d runs)", rep.s.services, rebuildBench, len(rep.rebuild)),
			fmt.Sprintf("%.3f ms", float64(med)/float64(time.Millisecond)), "≤ 1 ms", verdict(med <= goalRebuild)})
	}
	return rows
}

func (rep *report) print(w io.Writer) {
	fmt.Fprintf(w, "%d services (3 pools x 2 backends, %d backend addresses), one site with path matchers; CPUs %d %% busy with other work before the run\n",
		rep.s.services, rep.s.addresses, rep.machine.Busy)
	for _, r := range rep.rows() {
		fmt.Fprintf(w, "  %-75s %-28s goal %-10s %s\n", r[0], r[1], r[2], r[3])
	}
}

// write puts the report in dir/scale-<UTC time>.md.
func (rep *report) write(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	now := time.Now().UTC()
	path := filepath.Join(dir, "scale-"+now.Format("2006-01-02T150405Z")+".md")
	var b bytes.Buffer
	m, s := rep.machine, rep.s
	fmt.Fprintf(&b, "# %d services on one node\n\n", s.services)
	fmt.Fprintf(&b, "- date: %s\n", now.Format(time.RFC3339))
	fmt.Fprintf(&b, "- command: `%s`\n", s.command)
	fmt.Fprintf(&b, "- machine: %d CPUs (%s), %s, benchmark built with %s\n", m.CPUs, m.Model, m.Kernel, runtime.Version())
	fmt.Fprintf(&b, "- binary: `%s`, git HEAD %s\n", m.Version, m.GitHead)
	fmt.Fprintf(&b, "- other work: the CPUs were %d %% busy in the second before the run\n", m.Busy)
	if m.Busy > busyWarning {
		fmt.Fprintf(&b, "  **(other work above %d %% makes every time longer and noisier)**\n", busyWarning)
	}
	fmt.Fprintf(&b, "- node: one `cbproxy run`, a single-node cluster with an empty data dir, one site `http://127.0.0.1:%d` with `cbproxy /sNNNN/* sNNNN { … }` per service: pools blue, canary, green of 2 backends each, `weights blue=50 canary=25 green=25`, seeded from the Caddyfile; one `cbproxy-backend` process serving the %d backend addresses\n",
		proxyPort(s.portBase), s.addresses)
	fmt.Fprintf(&b, "\n| figure | this run | goal | |\n|---|---:|---:|---|\n")
	for _, r := range rep.rows() {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r[0], r[1], r[2], r[3])
	}
	fmt.Fprintf(&b, "\nRSS after each scrape (MiB):")
	for _, r := range rep.rssScrapes {
		fmt.Fprintf(&b, " %.0f", float64(r)/mib)
	}
	fmt.Fprintf(&b, "\n\nGET /v1/services (ms, sorted):")
	for _, d := range slices.Sorted(slices.Values(rep.listTimes)) {
		fmt.Fprintf(&b, " %s", ms(d))
	}
	if len(rep.rebuild) > 0 {
		fmt.Fprintf(&b, "\n\n%s runs (ms):", rebuildBench)
		for _, d := range rep.rebuild {
			fmt.Fprintf(&b, " %.3f", float64(d)/float64(time.Millisecond))
		}
	}
	fmt.Fprintf(&b, "\n\nOne run on a shared machine: compare medians of several runs, taken side by side.\n")
	if err := os.WriteFile(path+".tmp", b.Bytes(), 0o644); err != nil {
		return "", err
	}
	return path, os.Rename(path+".tmp", path)
}

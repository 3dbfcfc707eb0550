package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseRebuild(t *testing.T) {
	out := `goos: linux
BenchmarkRebuildOneService-2   	    8312	    174750 ns/op	   22192 B/op	      34 allocs/op
BenchmarkRebuildOneService-2   	    9909	    169724.5 ns/op	   22192 B/op	      34 allocs/op
BenchmarkOther-2   	    9909	    1 ns/op
PASS
`
	got := parseRebuild(out)
	if len(got) != 2 || got[0] != 174750*time.Nanosecond || got[1] != 169724*time.Nanosecond {
		t.Errorf("parseRebuild = %v, want [174.75µs 169.724µs]", got)
	}
}

func TestCountSeries(t *testing.T) {
	body := "# HELP a x\n# TYPE a counter\na{b=\"1\"} 2\n\na{b=\"2\"} 3\nc 1\n"
	if n := countSeries([]byte(body)); n != 3 {
		t.Errorf("countSeries = %d, want 3", n)
	}
}

func TestCaddyfileSpreadsBackends(t *testing.T) {
	s := settings{services: 2, addresses: 4, portBase: 7700}
	cf := caddyfile(s, "/tmp/x")
	for _, want := range []string{
		"cbproxy /s0000/* s0000 {", "cbproxy /s0001/* s0001 {",
		"pool blue 127.0.0.1:7711 127.0.0.1:7712", "pool canary 127.0.0.1:7713 127.0.0.1:7714",
		"pool green 127.0.0.1:7711 127.0.0.1:7712", // the fifth and sixth backend wrap around
	} {
		if !strings.Contains(cf, want) {
			t.Errorf("Caddyfile lacks %q:\n%s", want, cf)
		}
	}
}

func TestParseFlags(t *testing.T) {
	for _, args := range [][]string{{"-services", "0"}, {"-addresses", "601"}, {"-scrapes", "0"}, {"extra"}, {"-port-base", "80"}} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%q) accepted", args)
		}
	}
	if s, err := parseFlags(nil); err != nil || s.services != 1000 || s.addresses != 6 {
		t.Errorf("defaults: %+v, %v", s, err)
	}
}

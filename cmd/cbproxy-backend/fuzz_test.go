package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func FuzzParseList(f *testing.F) {
	for _, s := range []string{
		"blue=127.0.0.1:9001,green=127.0.0.1:9002,canary=127.0.0.1:9003",
		"blue=v1.4.1, canary=v1.5.0-rc1",
		"blue", "=x", "blue=", ",", "a=b,a=c", "Blue=x", "b=x=y", " a = b ",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		list, err := parseList(s)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, nv := range list {
			if !validName.MatchString(nv.name) || nv.value == "" || seen[nv.name] {
				t.Fatalf("parseList(%q) accepted %+v", s, list)
			}
			seen[nv.name] = true
		}
		if len(list) != strings.Count(s, ",")+1 {
			t.Fatalf("parseList(%q) gave %d items", s, len(list))
		}
	})
}

func FuzzMergeSettings(f *testing.F) {
	for _, s := range []string{
		`{"error_rate":0.05,"error_status":500,"latency_ms":0,"health":"ok"}`,
		`{"health":"degraded"}`, `{"error_rate":1e-7}`, `{"error_rate":NaN}`, `{"latency_ms":1e3}`,
		`{}`, `[]`, `null`, ``, `{"x":1}`, `{} {}`, `{"health":"ok"}x`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		s, err := mergeSettings(defaultSettings(), strings.NewReader(body))
		if err != nil {
			return
		}
		if err := s.validate(); err != nil {
			t.Fatalf("mergeSettings(%q) accepted invalid %+v: %v", body, s, err)
		}
		// What GET /_backend shows must be accepted back by PUT unchanged.
		out, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		again, err := mergeSettings(settings{}, strings.NewReader(string(out)))
		if err != nil || again != s {
			t.Fatalf("round trip of %s: %+v, %v", out, again, err)
		}
		bh := newBehavior("blue", s)
		if bh.errorPPM > ppm {
			t.Fatalf("error rate %v gave %d ppm", s.ErrorRate, bh.errorPPM)
		}
	})
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"/", "/api/v1/items", `/"\`, "/é", "\xff\xfe", "<&>", "\u2028\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := appendJSONString(nil, s)
		if want := jsonString(s); string(got) != string(want) {
			t.Fatalf("appendJSONString(%q) = %s, want %s", s, got, want)
		}
	})
}

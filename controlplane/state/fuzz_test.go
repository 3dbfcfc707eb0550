package state

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"strconv"
	"testing"
)

func FuzzParseWeight(f *testing.F) {
	for _, s := range []string{"0", "99", "99.5", "0.01", "100", "100.00", "100.01", "-1", "1e2", "007", ".5", "5.", "NaN", "", "99.123", "1.5E-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseWeight(s)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if w < 0 || w > Total {
			t.Fatalf("ParseWeight(%q) = %d, out of range", s, w)
		}
		// What ParseWeight accepts is a JSON number of the same value.
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || math.Round(f*100) != float64(w) {
			t.Fatalf("ParseWeight(%q) = %d, but the number is %v (%v)", s, w, f, ferr)
		}
		var viaJSON Weight
		if err := json.Unmarshal([]byte(s), &viaJSON); err != nil || viaJSON != w {
			t.Fatalf("JSON %s = %v, %v; want %d", s, viaJSON, err, w)
		}
		back, err := ParseWeight(w.String())
		if err != nil || back != w {
			t.Fatalf("ParseWeight(%q) = %d, %v; want %d", w.String(), back, err, w)
		}
	})
}

func FuzzWeightsJSON(f *testing.F) {
	for _, s := range []string{`{"blue": 99.5, "canary": 0.5}`, `{"blue": 100}`, `{}`, `null`, `{"a": "1"}`, `{"a": 1e2}`, `{"a": -0}`, `[]`, `{"a":1,"a":2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var w Weights
		if err := json.Unmarshal(data, &w); err != nil {
			return
		}
		for p, v := range w {
			if v < 0 || v > Total {
				t.Fatalf("pool %q got %d", p, v)
			}
		}
		b, err := json.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		var again Weights
		if err := json.Unmarshal(b, &again); err != nil {
			t.Fatalf("re-reading %s: %v", b, err)
		}
		if !reflect.DeepEqual(w, again) {
			t.Fatalf("round trip %v -> %s -> %v", w, b, again)
		}
		if b2, _ := json.Marshal(again); !bytes.Equal(b, b2) {
			t.Fatalf("encoding not stable: %s vs %s", b, b2)
		}
	})
}

func FuzzServiceSpec(f *testing.F) {
	seed, _ := json.Marshal(testSpec())
	f.Add("codingbrain", seed)
	f.Add("svc", []byte(`{"pools":{"blue":{"backends":["10.0.0.1:80","[::1]:81"]},"green":{"backends":[]}},"weights":{"green":100},"health":{"path":"/h","interval":"1s"},"slo":{"advance":{"p95_ms":100},"window":"1m"},"guard":"0s"}`))
	f.Add("svc", []byte(`{"pools":{"a":{"version":"v1","backends":["https://x.example:443"]}},"slo":{"rollback":{"error_rate":1}}}`))
	f.Add("Bad", []byte(`{"pools":{}}`))
	f.Add("svc", []byte(`{"pools":{"a":{"backends":["10.0.0.1:80"]}},"health":{"path":"/h","interval":"1ns","timeout":"1h","fails":101,"passes":100}}`))
	f.Add("svc", []byte(`{"pools":{"a":{"backends":["10.0.0.1:80"]}},"health":{"path":"/h","interval":"100ms","timeout":"10ms"},"slo":{"window":"5m"}}`))
	f.Add("svc", []byte(`{"pools":{"a":{"backends":["10.0.0.1:80"]}},"slo":{"window":"5m0.001s"}}`))
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		var spec ServiceSpec
		if err := json.Unmarshal(data, &spec); err != nil {
			return
		}
		s, err := NormalizeSpec(name, spec)
		limitsErr := CheckSpec(name, spec)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			if limitsErr == nil {
				t.Fatalf("CheckSpec accepted what NormalizeSpec refused: %v", err)
			}
			return
		}
		// The limits only ever refuse more, and say why.
		if limitsErr == nil {
			if h := s.Health; h != nil && (h.Interval < MinHealthInterval || h.Interval > MaxHealthInterval || h.Timeout < MinHealthTimeout || h.Timeout > MaxHealthTimeout || h.Fails > MaxHealthCount || h.Passes > MaxHealthCount) {
				t.Fatalf("CheckSpec accepted health check %+v", *h)
			}
			if s.SLO.Window < MinSLOWindow || s.SLO.Window > MaxSLOWindow {
				t.Fatalf("CheckSpec accepted slo window %s", s.SLO.Window)
			}
		} else if limitsErr.Error() == "" {
			t.Fatal("empty error")
		}
		if err := s.validate(); err != nil {
			t.Fatalf("NormalizeSpec accepted an invalid service: %v", err)
		}
		// The accepted spec, encoded and read again, defines the same service.
		b, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		var again ServiceSpec
		if err := json.Unmarshal(b, &again); err != nil {
			t.Fatalf("re-reading %s: %v", b, err)
		}
		if s2, err := NormalizeSpec(name, again); err != nil || !reflect.DeepEqual(s, s2) {
			t.Fatalf("round trip through %s: %v\n%+v\n%+v", b, err, s, s2)
		}
		// Normalizing is idempotent: the service's own settings, given as a
		// spec, define it again.
		if s3, err := NormalizeSpec(name, specOf(s)); err != nil || !reflect.DeepEqual(s, s3) {
			t.Fatalf("normalizing the normalized service: %v\n%+v\n%+v", err, s, s3)
		}
	})
}

// specOf is the spec a service's settings amount to.
func specOf(s *Service) ServiceSpec {
	spec := ServiceSpec{Pools: map[string]PoolSpec{}, Weights: s.Weights, Health: s.Health, SLO: &s.SLO, Guard: &s.Guard}
	for name, p := range s.Pools {
		spec.Pools[name] = PoolSpec{Version: p.Version, Backends: p.addresses()}
	}
	return spec
}

// FuzzApply feeds arbitrary entries, separated by newlines, to one machine.
// Nothing may panic, every published view must hold only valid services, and
// a snapshot must restore to the same bytes.
func FuzzApply(f *testing.F) {
	var seed [][]byte
	for _, c := range script() {
		data, err := Encode(c)
		if err != nil {
			f.Fatal(err)
		}
		seed = append(seed, data)
	}
	f.Add(bytes.Join(seed[:12], []byte("\n")))
	f.Add(bytes.Join(seed[20:40], []byte("\n")))
	f.Add([]byte("\x01{}\n\x03{\"service\":\"svc\",\"weights\":{\"a\":100}}\n\x85{}"))
	// Membership: join, removal (tombstone), a refused self-join, an
	// operator's join, the removal of a voter never recorded.
	n2 := `"node":{"id":"n2","cluster_addr":"127.0.0.1:7002","admin_addr":"127.0.0.1:7102"}`
	f.Add([]byte("\x06{" + n2 + `,"actor":"cluster"}` + "\n\x07{\"node\":{\"id\":\"n2\"},\"actor\":\"ops\"}\n\x06{" + n2 + `,"actor":"cluster"}` +
		"\n\x06{" + n2 + `,"actor":"ops"}` + "\n\x07{\"node\":{\"id\":\"n9\"}}\n\x07{\"node\":{\"id\":\"n9\"}}"))
	// Entries of a newer build: unknown fields, top-level and nested.
	f.Add(append(bytes.Join(seed[:3], []byte("\n")), []byte("\n\x03{\"service\":\"svc\",\"weights\":{\"blue\":100},\"zone\":1}\n\x01{\"service\":\"svc\",\"spec\":{\"pools\":{\"a\":{\"backends\":[],\"zone\":\"b\"}}}}")...))
	f.Fuzz(func(t *testing.T, data []byte) {
		m := NewMachine(Options{MaxEvents: 8})
		for i, entry := range bytes.Split(data, []byte("\n")) {
			before := m.View()
			r := m.Apply(uint64(i+1), entry)
			if !r.OK() && r.Err == "" {
				t.Fatalf("refusal without an error: %+v", r)
			}
			if r.Code == CodeUnsupported && m.View() != before {
				t.Fatalf("an entry this build cannot apply changed the state: %q", entry)
			}
			checkViewValid(t, m.View())
			for id := range m.View().Removed {
				if _, member := m.View().Nodes[id]; member {
					t.Fatalf("node %s is both a member and removed", id)
				}
			}
		}
		var buf bytes.Buffer
		if err := m.WriteSnapshot(&buf); err != nil {
			t.Fatal(err)
		}
		m2 := NewMachine(Options{MaxEvents: 8})
		if err := m2.Restore(bytes.NewReader(buf.Bytes())); err != nil {
			t.Fatalf("restoring %s: %v", buf.Bytes(), err)
		}
		var buf2 bytes.Buffer
		if err := m2.WriteSnapshot(&buf2); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), buf2.Bytes()) {
			t.Fatalf("snapshot changed by restore:\n%s\n%s", buf.Bytes(), buf2.Bytes())
		}
	})
}

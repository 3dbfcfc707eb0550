package state

import (
	"bytes"
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestApplyUnsupportedChangesNothing: an entry this build cannot apply (a kind
// it does not know, a field it does not know in a known kind, JSON it cannot
// decode) changes nothing, not even the index, and publishes nothing, so the
// node can stop there and apply it once it runs a newer build. Before, such an
// entry was refused as "invalid" and the index moved past it.
func TestApplyUnsupportedChangesNothing(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply(put("svc", testSpec()))
	var before bytes.Buffer
	if err := h.m.WriteSnapshot(&before); err != nil {
		t.Fatal(err)
	}
	published := len(h.added)
	weights, err := Encode(Command{Kind: KindSetWeights, Service: "svc", Weights: Weights{"green": Total}, Time: t0, Actor: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	withField := func(entry []byte, after, field string) []byte {
		s := string(entry)
		i := strings.Index(s, after)
		if i < 0 {
			t.Fatalf("%q not in %s", after, s)
		}
		return []byte(s[:i+len(after)] + field + "," + s[i+len(after):])
	}
	put, err := Encode(put("svc", withSpec(func(s *ServiceSpec) { s.Health = &HealthCheck{Path: "/h"} })))
	if err != nil {
		t.Fatal(err)
	}
	for name, entry := range map[string][]byte{
		"unknown kind":            append([]byte{0x7e}, `{"service":"svc"}`...),
		"kind with the high bit":  append([]byte{0x85}, `{}`...),
		"unknown field":           withField(weights, `{`, `"jitter":"5s"`),
		"unknown nested field":    withField(put, `"health":{`, `"method":"HEAD"`),
		"unknown field of a pool": withField(put, `"green":{`, `"zone":"b"`),
		"field in other case":     withField(weights, `{`, `"SERVICE":"svc"`),
		"undecodable":             append([]byte{byte(KindSetWeights)}, `{"weights":`...),
		"wrong type":              append([]byte{byte(KindSetWeights)}, `{"weights":{"blue":"100"}}`...),
		"not an object":           append([]byte{byte(KindSetWeights)}, `[]`...),
		"empty":                   nil,
	} {
		r := h.m.Apply(h.index+5, entry)
		if r.Code != "unsupported" || r.Err == "" || r.Changed {
			t.Errorf("%s: Apply(%q) = %+v, want code unsupported", name, entry, r)
		}
		if got := h.m.View().Index; got != h.index {
			t.Errorf("%s: index moved to %d, want %d", name, got, h.index)
		}
		if len(h.added) != published {
			t.Errorf("%s: a view was published", name)
		}
		var after bytes.Buffer
		if err := h.m.WriteSnapshot(&after); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(before.Bytes(), after.Bytes()) {
			t.Errorf("%s: the state changed", name)
		}
	}
	// The same command without the field applies.
	if r := h.m.Apply(h.index+6, weights); !r.OK() || h.m.View().Index != h.index+6 {
		t.Fatalf("the known command: %+v, index %d", r, h.m.View().Index)
	}
}

// fill sets every field reachable from v to a non-zero value: one key in
// every map, one element in every list.
func fill(t *testing.T, v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(t, v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(t0))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(t, v.Field(i))
			}
		}
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		elem := reflect.New(v.Type().Elem()).Elem()
		fill(t, elem)
		v.SetMapIndex(reflect.ValueOf("x").Convert(v.Type().Key()), elem)
	case reflect.Slice:
		elem := reflect.New(v.Type().Elem()).Elem()
		fill(t, elem)
		v.Set(reflect.Append(reflect.MakeSlice(v.Type(), 0, 1), elem))
	case reflect.Interface:
		v.Set(reflect.ValueOf("x"))
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Float64:
		v.SetFloat(0.5)
	default:
		switch {
		case v.CanInt():
			v.SetInt(1)
		case v.CanUint():
			v.SetUint(1)
		default:
			t.Fatalf("fill: no value for %s", v.Type())
		}
	}
}

// TestCommandFieldsAreTheEncodedOnes: the field capabilities derived from the
// Command type are exactly the keys of an encoded command with every field
// set, so the check of a leader and the decoding of a follower agree.
func TestCommandFieldsAreTheEncodedOnes(t *testing.T) {
	var c Command
	fill(t, reflect.ValueOf(&c).Elem())
	c.Kind = KindPutService
	entry, err := Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(entry[1:], &doc); err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	var unknown []string
	usedFields(doc, commandType, "", used, &unknown)
	if len(unknown) > 0 {
		t.Fatalf("unknown fields in an encoded command: %v", unknown)
	}
	got := slices.Sorted(maps.Keys(used))
	if !slices.Equal(got, commandFields) {
		t.Fatalf("encoded fields\n%v\nderived fields\n%v", got, commandFields)
	}
	if lacks := NewMachine(Options{}).Capabilities().Lacks(entry); lacks != nil {
		t.Fatalf("this build lacks %v of its own command", lacks)
	}
}

// TestBaselineStillApplied: the frozen baseline is part of what this build
// applies: a kind or field removed from it would make entries of older
// builds unsupported after an upgrade.
func TestBaselineStillApplied(t *testing.T) {
	have, base := NewMachine(Options{}).Capabilities(), Baseline()
	if have.Format < base.Format {
		t.Errorf("format %d below the baseline's %d", have.Format, base.Format)
	}
	for _, k := range base.Kinds {
		if !have.Has(k) {
			t.Errorf("this build lacks the baseline kind %s", k)
		}
	}
	for _, f := range base.Fields {
		if _, ok := slices.BinarySearch(have.Fields, f); !ok {
			t.Errorf("this build lacks the baseline field %s", f)
		}
	}
	if !slices.IsSorted(base.Fields) {
		t.Error("baseline fields not sorted")
	}
	for k := range handlers {
		if strings.HasPrefix(k.String(), "kind ") {
			t.Errorf("kind %#02x has no name in kindNames", byte(k))
		}
	}
}

// TestCapabilitiesLacks: what an older build lacks of an entry, by kind and
// by field, and that the machine of such a build refuses exactly that.
func TestCapabilitiesLacks(t *testing.T) {
	old := NewMachine(Options{WithoutKinds: []Kind{KindSetDrain}, WithoutFields: []string{"from_step_started", "spec.pools.*.version"}})
	caps := old.Capabilities()
	if caps.Has(KindSetDrain) || !caps.Has(KindSetWeights) || slices.Contains(caps.Fields, "from_step_started") || caps.Format != EntryFormat {
		t.Fatalf("capabilities %+v", caps)
	}
	enc := func(c Command) []byte {
		c.Time, c.Actor = t0, "ops"
		b, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name  string
		entry []byte
		lacks []string
	}{
		{"weights", enc(setWeights("svc", Weights{"blue": Total})), nil},
		{"drain", enc(drain("svc", "blue", ActionDrain, "10.0.0.11:8765")), []string{"set_drain"}},
		{"step with its epoch", enc(Command{Kind: KindRolloutChange, Service: "svc", Action: ActionRolloutStep, RolloutID: "r", FromStep: 1, FromStepStarted: t0}), []string{"field from_step_started"}},
		{"step without", enc(Command{Kind: KindRolloutChange, Service: "svc", Action: ActionRolloutStep, RolloutID: "r", FromStep: 1}), nil},
		{"pool version", enc(put("svc", testSpec())), []string{"field spec.pools.*.version"}},
		{"unknown kind and field", append([]byte{0x7e}, `{"service":"svc","zone":"b"}`...), []string{"kind 0x7e", "field zone"}},
		{"not JSON", []byte{byte(KindSetWeights), '{'}, []string{"a log entry that is not JSON (unexpected end of JSON input)"}},
	} {
		if got := caps.Lacks(tc.entry); !slices.Equal(got, tc.lacks) {
			t.Errorf("%s: lacks %q, want %q", tc.name, got, tc.lacks)
		}
		r := old.Apply(1, tc.entry)
		if unsupported := r.Code == CodeUnsupported; unsupported != (tc.lacks != nil) {
			t.Errorf("%s: the older machine answers %+v", tc.name, r)
		}
	}
	if got := (Capabilities{}).Lacks(enc(setWeights("svc", Weights{"blue": Total}))); !slices.Equal(got, []string{"log entry format 1"}) {
		t.Errorf("a build without a format lacks %q", got)
	}
}

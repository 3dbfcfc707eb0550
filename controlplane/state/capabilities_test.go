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
	weights, err := Encode(Command{Envelope: Envelope{Service: "svc", Time: t0, Actor: "ops"}, Payload: SetWeights{Weights: Weights{"green": Total}}})
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

// TestCommandFieldsAreTheEncodedOnes: the field capabilities derived for
// each kind are exactly the keys of an encoded command of that kind with
// every field set, so the check of a leader and the decoding of a follower
// agree; and the fields of all kinds together are their union.
func TestCommandFieldsAreTheEncodedOnes(t *testing.T) {
	caps := NewMachine(Options{}).Capabilities()
	var all []string
	for _, k := range slices.Sorted(maps.Keys(commands)) {
		reg := commands[k]
		var env Envelope
		fill(t, reflect.ValueOf(&env).Elem())
		p := reflect.New(reg.payload).Elem()
		fill(t, p)
		entry, err := Encode(Command{Envelope: env, Payload: p.Interface().(Payload)})
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := json.Unmarshal(entry[1:], &doc); err != nil {
			t.Fatal(err)
		}
		used := map[string]bool{}
		var unknown []string
		usedKeys(doc, reg.keys, "", used, &unknown)
		if len(unknown) > 0 {
			t.Fatalf("%s: unknown fields in an encoded command: %v", k, unknown)
		}
		got := slices.Sorted(maps.Keys(used))
		if !slices.Equal(got, reg.fields) || !slices.Equal(caps.KindFields[k], reg.fields) {
			t.Fatalf("%s: encoded fields\n%v\nderived fields\n%v\nadvertised\n%v", k, got, reg.fields, caps.KindFields[k])
		}
		if lacks := caps.Lacks(entry); lacks != nil {
			t.Fatalf("%s: this build lacks %v of its own command", k, lacks)
		}
		all = append(all, got...)
	}
	slices.Sort(all)
	if all = slices.Compact(all); !slices.Equal(caps.Fields, all) {
		t.Fatalf("fields of all kinds\n%v\nunion of each kind's\n%v", caps.Fields, all)
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
		for _, f := range base.KindFields[k] {
			if _, ok := slices.BinarySearch(have.KindFields[k], f); !ok {
				t.Errorf("this build lacks the baseline field %s of %s", f, k)
			}
		}
	}
	var union []string
	for _, f := range base.KindFields {
		union = append(union, f...)
	}
	slices.Sort(union)
	if !slices.IsSorted(base.Fields) || !slices.Equal(slices.Compact(union), base.Fields) {
		t.Errorf("baseline fields %v are not sorted or not the union of its kinds' %v", base.Fields, union)
	}
	for _, f := range base.Fields {
		if _, ok := slices.BinarySearch(have.Fields, f); !ok {
			t.Errorf("this build lacks the baseline field %s", f)
		}
	}
}

// TestCapabilitiesOfBuildsBeforeTypedCommands: a build from before typed
// commands advertises its fields for all kinds together; it is taken to
// apply, of each kind, what the baseline lists for that kind (that is what
// its handlers read), so a field it knows from another kind is not assumed
// for this one. Every entry of the baseline's kinds this build writes is
// applicable by it.
func TestCapabilitiesOfBuildsBeforeTypedCommands(t *testing.T) {
	// What such a build sends in its status.
	sent, err := json.Marshal(struct {
		Format int      `json:"format"`
		Kinds  []Kind   `json:"kinds"`
		Fields []string `json:"fields"`
	}{1, Baseline().Kinds, baselineFields})
	if err != nil {
		t.Fatal(err)
	}
	var legacy Capabilities
	if err := json.Unmarshal(sent, &legacy); err != nil || !slices.Equal(legacy.Kinds, Baseline().Kinds) {
		t.Fatalf("read %s as %+v, %v", sent, legacy, err)
	}
	if legacy.KindFields != nil {
		t.Fatal("kind fields from nowhere")
	}
	if got := legacy.fieldsOf(KindRollback); !slices.Equal(got, baselineKindFields(KindRollback)) || slices.Contains(got, "from_step") {
		t.Errorf("rollback fields of an older build: %v", got)
	}
	_, entries := readGolden(t, goldenEntries)
	for _, e := range entries {
		if !slices.Contains(Baseline().Kinds, Kind(e[0])) {
			continue // a kind added after typed commands (the notifiers')
		}
		if lacks := legacy.Lacks(e); lacks != nil {
			t.Errorf("an older build lacks %v of %s", lacks, e)
		}
	}
	// One that lacks a field in its flat list lacks it in every kind.
	legacy.Fields = slices.DeleteFunc(slices.Clone(baselineFields), func(f string) bool { return f == "from_step_started" })
	step := NewCommand("svc", "watcher", RolloutChange{Action: StepRollout, RolloutID: "r", FromStep: 1, FromStepStarted: t0})
	step.Time = t0
	entry, err := Encode(step)
	if err != nil {
		t.Fatal(err)
	}
	if got := legacy.Lacks(entry); !slices.Equal(got, []string{"field from_step_started"}) {
		t.Errorf("lacks %q", got)
	}
}

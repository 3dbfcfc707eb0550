package state

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
)

// Capabilities says which log entries a build can apply: the entry format,
// the command kinds it registers and applies, and the fields an entry of
// each kind may hold, as paths of JSON keys ("spec.pools.*.backends": "*"
// stands for any key of a map, and the elements of a list add nothing).
// Every node advertises its own; the leader writes an entry only when every
// member can apply it (Lacks), and a node that meets one it cannot apply
// anyway stops (Apply refuses it as CodeUnsupported and changes nothing).
//
// The fields are derived from the envelope and each kind's payload type, so
// a field added to a payload is a new capability by itself: older nodes do
// not list it for that kind, and the leader does not write it while one of
// them is a member.
type Capabilities struct {
	// Format is the log entry encoding the build reads (EntryFormat).
	Format int `json:"format"`
	// Kinds are the command kinds the build applies, in increasing order.
	Kinds []Kind `json:"kinds"`
	// Fields are the field paths of all those kinds together, sorted:
	// what builds from before typed commands advertise, and check an entry
	// against whatever its kind.
	Fields []string `json:"fields"`
	// KindFields are, by kind, the field paths an entry of that kind may
	// hold (the envelope's included), sorted. Absent from builds before
	// typed commands; of each kind, such a build applies the fields the
	// baseline lists for it.
	KindFields map[Kind][]string `json:"kind_fields,omitempty"`
}

// EntryFormat is the log entry encoding this build writes and reads: one Kind
// byte followed by the command as a JSON object (Encode).
const EntryFormat = 1

// CodeUnsupported is the result of an entry this build cannot apply: a kind
// it does not know, a field it does not know, or bytes it cannot decode. The
// machine changes nothing for it, not even its index; the node stops there
// (it is not an answer to a client).
const CodeUnsupported = "unsupported"

// newCapabilities is what this build applies (the registry less
// builtWithout), less the kinds and fields a machine is told to lack.
func newCapabilities(withoutKinds []Kind, withoutFields []string) Capabilities {
	c := Capabilities{Format: EntryFormat, KindFields: map[Kind][]string{}}
	var all []string
	for k, reg := range commands {
		if slices.Contains(builtWithout, k) || slices.Contains(withoutKinds, k) {
			continue
		}
		c.Kinds = append(c.Kinds, k)
		fields := []string{}
		for _, f := range reg.fields {
			if !slices.Contains(withoutFields, f) {
				fields = append(fields, f)
			}
		}
		c.KindFields[k] = fields
		all = append(all, fields...)
	}
	slices.Sort(c.Kinds)
	slices.Sort(all)
	c.Fields = slices.Compact(all)
	return c
}

// clone is a deep copy of c.
func (c Capabilities) clone() Capabilities {
	out := Capabilities{Format: c.Format, Kinds: slices.Clone(c.Kinds), Fields: slices.Clone(c.Fields)}
	if c.KindFields != nil {
		out.KindFields = make(map[Kind][]string, len(c.KindFields))
		for k, f := range c.KindFields {
			out.KindFields[k] = slices.Clone(f)
		}
	}
	return out
}

// Has reports whether the build applies commands of kind k.
func (c Capabilities) Has(k Kind) bool { return slices.Contains(c.Kinds, k) }

// fieldsOf are the field paths the build applies in an entry of kind k,
// sorted.
func (c Capabilities) fieldsOf(k Kind) []string {
	if c.KindFields != nil {
		return c.KindFields[k]
	}
	// A build from before typed commands lists the fields of all its kinds
	// together and decodes every one of them in an entry of any kind, but
	// of each kind it applies only what the baseline lists for that kind
	// (the baseline is that build): a field it knows from another kind
	// would be dropped in silence.
	var out []string
	for _, f := range baselineKindFields(k) {
		if _, found := slices.BinarySearch(c.Fields, f); found {
			out = append(out, f)
		}
	}
	return out
}

// Lacks says what of a log entry a build with these capabilities cannot
// apply, in words for an operator ("set_drain", "field from_step_started");
// nil when it can apply it. The entry is read with this build's types for
// its kind: a key they lack is lacked whatever the capabilities. An entry it
// cannot decode as a JSON object lacks everything.
func (c Capabilities) Lacks(entry []byte) []string {
	if c.Format < EntryFormat {
		return []string{fmt.Sprintf("log entry format %d", EntryFormat)}
	}
	if len(entry) == 0 {
		return []string{"an empty log entry"}
	}
	var lacks []string
	k := Kind(entry[0])
	has := c.Has(k)
	if !has {
		lacks = append(lacks, k.String())
	}
	var doc any
	if err := json.Unmarshal(entry[1:], &doc); err != nil {
		return append(lacks, "a log entry that is not JSON ("+err.Error()+")")
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return append(lacks, "a log entry that is not a JSON object")
	}
	keys := anyKindFields
	if reg, ok := commands[k]; ok {
		keys = reg.keys
	}
	used := map[string]bool{}
	var unknown []string
	usedKeys(obj, keys, "", used, &unknown)
	for _, f := range unknown {
		lacks = append(lacks, "field "+f)
	}
	// Of a kind it lacks, only the kind is named (and the fields no kind of
	// it holds).
	applies := c.Fields
	if has {
		applies = c.fieldsOf(k)
	}
	var missing []string
	for f := range used {
		if _, found := slices.BinarySearch(applies, f); !found {
			missing = append(missing, "field "+f)
		}
	}
	sort.Strings(missing)
	return append(lacks, missing...)
}

// Baseline is what every build that advertises capabilities applies: the
// kinds and fields of the first one. The leader assumes it of a member that
// has not told its own yet (it is down, or it runs a build from before
// capabilities), so the writes every node can apply never wait for it. It is
// frozen: never add to it, and never remove a kind or field of it from a
// payload (logs and forwarded commands of older builds still hold them).
func Baseline() Capabilities {
	c := Capabilities{
		Format: 1,
		Kinds: []Kind{KindPutService, KindDeleteService, KindSetWeights, KindSetPool, KindSetDrain,
			KindNodeJoin, KindNodeRemove, KindRolloutStart, KindRolloutChange, KindRollback},
		Fields:     slices.Clone(baselineFields),
		KindFields: map[Kind][]string{},
	}
	for _, k := range c.Kinds {
		c.KindFields[k] = baselineKindFields(k)
	}
	return c
}

// baselineFields are the fields of the baseline, all kinds together.
var baselineFields = []string{
	"action", "actor", "backends", "figures", "from_step", "from_step_started", "guard_id",
	"idem_hash", "idem_key", "if_version", "kind",
	"node", "node.admin_addr", "node.cluster_addr", "node.id",
	"pool", "pool_version", "reason", "rollout_id",
	"rollout_spec", "rollout_spec.bake", "rollout_spec.from", "rollout_spec.gate", "rollout_spec.steps",
	"rollout_spec.steps.hold", "rollout_spec.steps.weight", "rollout_spec.strategy", "rollout_spec.to",
	"seed", "service",
	"spec", "spec.guard", "spec.health", "spec.health.fails", "spec.health.interval", "spec.health.passes",
	"spec.health.path", "spec.health.timeout", "spec.pools", "spec.pools.*.backends", "spec.pools.*.version",
	"spec.slo", "spec.slo.advance", "spec.slo.advance.error_rate", "spec.slo.advance.p95_ms",
	"spec.slo.consecutive", "spec.slo.min_requests", "spec.slo.rollback", "spec.slo.rollback.error_rate",
	"spec.slo.rollback.p95_ms", "spec.slo.window", "spec.weights",
	"time", "trigger", "weights",
}

// baselineEnvelope and baselinePayloads are the baseline's fields by kind:
// those of every kind, and those each kind's handler reads.
var (
	baselineEnvelope = []string{"actor", "idem_hash", "idem_key", "if_version", "kind", "reason", "service", "time"}
	baselinePayloads = map[Kind][]string{
		KindPutService: {"seed", "spec", "spec.guard", "spec.health", "spec.health.fails", "spec.health.interval", "spec.health.passes",
			"spec.health.path", "spec.health.timeout", "spec.pools", "spec.pools.*.backends", "spec.pools.*.version",
			"spec.slo", "spec.slo.advance", "spec.slo.advance.error_rate", "spec.slo.advance.p95_ms",
			"spec.slo.consecutive", "spec.slo.min_requests", "spec.slo.rollback", "spec.slo.rollback.error_rate",
			"spec.slo.rollback.p95_ms", "spec.slo.window", "spec.weights"},
		KindDeleteService: {},
		KindSetWeights:    {"action", "weights"},
		KindSetPool:       {"backends", "pool", "pool_version"},
		KindSetDrain:      {"action", "backends", "pool"},
		KindNodeJoin:      {"node", "node.admin_addr", "node.cluster_addr", "node.id"},
		KindNodeRemove:    {"node", "node.admin_addr", "node.cluster_addr", "node.id"},
		KindRolloutStart: {"rollout_spec", "rollout_spec.bake", "rollout_spec.from", "rollout_spec.gate", "rollout_spec.steps",
			"rollout_spec.steps.hold", "rollout_spec.steps.weight", "rollout_spec.strategy", "rollout_spec.to"},
		KindRolloutChange: {"action", "figures", "from_step", "from_step_started", "rollout_id"},
		KindRollback:      {"figures", "guard_id", "rollout_id", "trigger"},
	}
)

// baselineKindFields are the baseline's fields of kind k, sorted (none for a
// kind it lacks).
func baselineKindFields(k Kind) []string {
	p, ok := baselinePayloads[k]
	if !ok {
		return nil
	}
	out := slices.Concat(baselineEnvelope, p)
	slices.Sort(out)
	return out
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// isLeaf reports whether t has no fields of its own as far as capabilities
// go: scalars, interfaces, and types that decode themselves (times,
// durations, weights), whose own decoding says whether they can read a value.
func isLeaf(t reflect.Type) bool {
	if t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType) {
		return true
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Map, reflect.Slice, reflect.Array:
		return false
	}
	return true
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// jsonFields maps the JSON keys of struct type t to their types, as
// encoding/json names them (tag name, else the Go name; embedded structs
// without a tag lend their fields).
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && deref(f.Type).Kind() == reflect.Struct {
			for k, v := range jsonFields(deref(f.Type)) {
				out[k] = v
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

func joinPath(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// fieldPaths appends every field path of type t under prefix.
func fieldPaths(t reflect.Type, prefix string, out *[]string) {
	t = deref(t)
	if isLeaf(t) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		for name, ft := range jsonFields(t) {
			p := joinPath(prefix, name)
			*out = append(*out, p)
			fieldPaths(ft, p, out)
		}
	case reflect.Map:
		fieldPaths(t.Elem(), prefix+".*", out)
	case reflect.Slice, reflect.Array:
		fieldPaths(t.Elem(), prefix, out)
	}
}

// usedFields walks the decoded JSON v as type t would read it: the paths of
// the keys t knows go to used, the others to unknown. A value of the wrong
// shape is left to the decoder, which refuses it.
func usedFields(v any, t reflect.Type, prefix string, used map[string]bool, unknown *[]string) {
	t = deref(t)
	if isLeaf(t) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, _ := v.(map[string]any)
		usedKeys(obj, jsonFields(t), prefix, used, unknown)
	case reflect.Map:
		obj, _ := v.(map[string]any)
		for _, val := range obj {
			usedFields(val, t.Elem(), prefix+".*", used, unknown)
		}
	case reflect.Slice, reflect.Array:
		list, _ := v.([]any)
		for _, el := range list {
			usedFields(el, t.Elem(), prefix, used, unknown)
		}
	}
}

// usedKeys walks the keys of obj, an object whose known keys and their types
// are fields, as usedFields does.
func usedKeys(obj map[string]any, fields map[string]reflect.Type, prefix string, used map[string]bool, unknown *[]string) {
	for _, k := range sortedKeys(obj) {
		p := joinPath(prefix, k)
		ft, ok := fields[k]
		if !ok {
			*unknown = append(*unknown, p)
			continue
		}
		used[p] = true
		usedFields(obj[k], ft, p, used, unknown)
	}
}

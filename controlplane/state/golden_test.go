package state

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The golden files hold log entries as builds write them, and what applying
// them gives. Entries already in the logs of running clusters must decode and
// apply the same on every later build, and a later build must write the same
// bytes for the same command (a node of the previous build applies them
// during a rolling upgrade). They were written by the build before typed
// commands; never regenerate them to make a change pass: a difference is a
// change of the log format.
var updateGolden = flag.Bool("update-golden", false, "rewrite testdata/*.golden from this build (only for new entries; see golden_test.go)")

const (
	goldenEntries = "testdata/entries.golden"
	goldenResults = "testdata/entries-results.golden"
	// goldenSnapshot is the state after the entries of the kinds the
	// baseline build has (the build before typed commands wrote it);
	// goldenSnapshotLatest the state after every entry, later kinds too.
	goldenSnapshot       = "testdata/entries-snapshot.golden.json"
	goldenSnapshotLatest = "testdata/entries-snapshot-latest.golden.json"
	goldenScript         = "testdata/script.golden"
)

// goldenCommand is one command as a part of cbproxy builds it.
type goldenCommand struct {
	name string
	cmd  Command
}

// goldenCommands are commands of every kind as the admin API, the watcher,
// the membership code and the Caddyfile seed build them, with every field
// they set, and some refusals; in an order in which they apply, one second
// apart.
func goldenCommands() []goldenCommand {
	guard := Duration(10 * time.Minute)
	full := ServiceSpec{
		Pools: map[string]PoolSpec{
			"blue":   {Version: "v1", Backends: []string{"10.0.0.11:8765", "10.0.0.12:8765"}},
			"canary": {Version: "v2-rc1", Backends: []string{"10.0.0.31:8765"}},
			"green":  {Backends: []string{"https://green.internal:8443"}},
		},
		Weights: Weights{"blue": Total},
		Health:  &HealthCheck{Path: "/health/ready", Interval: Duration(2 * time.Second), Timeout: Duration(time.Second), Fails: 3, Passes: 2},
		SLO: &SLO{
			Advance: Thresholds{ErrorRate: 0.001, P95ms: 400}, Rollback: Thresholds{ErrorRate: 0.02, P95ms: 1500.5},
			Window: Duration(30 * time.Second), MinRequests: 50, Consecutive: 2,
		},
		Guard: &guard,
	}
	seed := ServiceSpec{Pools: map[string]PoolSpec{"a": {Backends: []string{"127.0.0.1:9001"}}, "b": {Version: "next", Backends: []string{"[::1]:9002"}}}}
	figures := func(result string) map[string]any {
		var f map[string]any
		if err := json.Unmarshal([]byte(`{"result":"`+result+`","pools":{"canary":{"requests":240,"errors":12,"error_rate":0.05,"p95_ms":812.5,"nodes_reporting":3,"nodes_missing":["n3"]},"blue":{"requests":9000,"errors":1,"error_rate":0.000111,"p95_ms":120,"nodes_reporting":3}}}`), &f); err != nil {
			panic(err)
		}
		return f
	}
	n2 := NodeInfo{ID: "n2", ClusterAddr: "127.0.0.1:7002", AdminAddr: "127.0.0.1:7102"}
	n3 := NodeInfo{ID: "n3", ClusterAddr: "10.0.0.3:7000", AdminAddr: "[::1]:7100"}
	start := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	at := func(i int) time.Time { return start.Add(time.Duration(i) * time.Second) }
	// The rollouts' IDs and step start times, as the state will have them.
	canaryID := "svc-16"
	return []goldenCommand{
		{"put_service create", Command{Envelope: Envelope{Service: "svc", Actor: "admin", IfVersion: ptr(uint64(0)), IdemKey: "client:put-1", IdemHash: "3f1c"}, Payload: PutService{Spec: &full}}},
		{"put_service seed", Command{Envelope: Envelope{Service: "seeded", Actor: "seed", Reason: "seeded from the Caddyfile", IdemKey: "seed:seeded:0a1b", IdemHash: "seed:seeded:0a1b"}, Payload: PutService{Spec: &seed, Seed: true}}},
		{"put_service seed of a known name", Command{Envelope: Envelope{Service: "svc", Actor: "seed", Reason: "seeded from the Caddyfile", IdemKey: "seed:svc:77aa", IdemHash: "seed:svc:77aa"}, Payload: PutService{Spec: &seed, Seed: true}}},
		{"set_weights weights", Command{Envelope: Envelope{Service: "svc", Actor: "ops", IfVersion: ptr(uint64(1)), IdemKey: "client:w-1", IdemHash: "9e0d"}, Payload: SetWeights{Weights: Weights{"blue": 9950, "canary": 50}, Action: ChangeWeights}}},
		{"set_weights switch", Command{Envelope: Envelope{Service: "svc", Actor: "ops", IdemKey: "auto:5a5a", IdemHash: "auto:5a5a"}, Payload: SetWeights{Weights: Weights{"green": Total}, Action: SwitchWeights}}},
		{"set_weights unknown pool", Command{Envelope: Envelope{Service: "svc", Actor: "ops", IdemKey: "auto:6b6b", IdemHash: "auto:6b6b"}, Payload: SetWeights{Weights: Weights{"purple": Total}, Action: ChangeWeights}}},
		{"set_pool new", Command{Envelope: Envelope{Service: "svc", Actor: "admin"}, Payload: SetPool{Pool: "gray", Backends: []string{"10.0.0.41:8765", "gray-2.internal:8765"}, PoolVersion: "v3"}}},
		{"set_pool emptied", Command{Envelope: Envelope{Service: "svc", Actor: "admin", IdemKey: "auto:7c7c", IdemHash: "auto:7c7c"}, Payload: SetPool{Pool: "gray", Backends: []string{}}}},
		{"set_drain drain", Command{Envelope: Envelope{Service: "svc", Actor: "ops"}, Payload: SetDrain{Pool: "blue", Backends: []string{"10.0.0.12:8765"}, Action: DrainBackends}}},
		{"set_drain undrain", Command{Envelope: Envelope{Service: "svc", Actor: "ops", IdemKey: "auto:8d8d", IdemHash: "auto:8d8d"}, Payload: SetDrain{Pool: "blue", Backends: []string{"10.0.0.12:8765"}, Action: UndrainBackends}}},
		{"node_join self", Command{Envelope: Envelope{Actor: ActorCluster, IdemKey: "auto:9e9e", IdemHash: "auto:9e9e"}, Payload: NodeJoin{Node: &n2}}},
		{"node_join operator", Command{Envelope: Envelope{Actor: "admin"}, Payload: NodeJoin{Node: &n3}}},
		{"node_remove", Command{Envelope: Envelope{Actor: "admin"}, Payload: NodeRemove{Node: &NodeInfo{ID: "n3"}}}},
		{"node_join removed self", Command{Envelope: Envelope{Actor: ActorCluster, IdemKey: "auto:afaf", IdemHash: "auto:afaf"}, Payload: NodeJoin{Node: &n3}}},
		{"rollback manual", Command{Envelope: Envelope{Service: "svc", Actor: "ops", Reason: "rolled back by ops"}, Payload: Rollback{Trigger: TriggerManual}}},
		{"rollout_start canary", Command{Envelope: Envelope{Service: "svc", Actor: "ops"}, Payload: RolloutStart{Spec: &RolloutSpec{
			Strategy: StrategyCanary, From: "blue", To: "canary", Gate: GateAuto,
			Steps: []Step{{Weight: 1, Hold: Duration(time.Minute)}, {Weight: 2550, Hold: Duration(90 * time.Second)}, {Weight: Total}},
		}}}},
		{"rollout_change step", stepDecision("svc", &Rollout{ID: canaryID, Step: 1, StepStarted: at(16)}, StepRollout, figures("pass"))},
		{"rollout_change pause", Command{Envelope: Envelope{Service: "svc", Actor: "ops", IfVersion: ptr(uint64(17))}, Payload: RolloutChange{Action: PauseRollout}}},
		{"rollout_change resume", Command{Envelope: Envelope{Service: "svc", Actor: "ops"}, Payload: RolloutChange{Action: ResumeRollout}}},
		{"rollout_change wait", stepDecision("svc", &Rollout{ID: canaryID, Step: 2, StepStarted: at(19)}, WaitRollout, figures("pass"))},
		{"rollout_change promote", Command{Envelope: Envelope{Service: "svc", Actor: "ops", IdemKey: "client:promote", IdemHash: "c0c0"}, Payload: RolloutChange{Action: PromoteRollout}}},
		{"rollback auto of a rollout", Command{Envelope: Envelope{Service: "svc", Actor: "watcher", Reason: "canary error rate 5.00 % is above the rollback limit 2.00 %", IdemKey: "decision:svc/" + canaryID + "/rollback", IdemHash: "rollback"}, Payload: Rollback{Trigger: TriggerAuto, RolloutID: canaryID, Figures: figures("breach")}}},
		{"rollout_start blue-green", Command{Envelope: Envelope{Service: "svc", Actor: "ops"}, Payload: RolloutStart{Spec: &RolloutSpec{Strategy: StrategyBlueGreen, To: "green", Gate: GateManual, Bake: Duration(2 * time.Minute)}}}},
		{"rollback abort", Command{Envelope: Envelope{Service: "svc", Actor: "ops", Reason: "aborted by ops"}, Payload: Rollback{Trigger: TriggerAbort}}},
		{"rollout_change refused without a rollout", Command{Envelope: Envelope{Service: "svc", Actor: "ops", IdemKey: "auto:b0b0", IdemHash: "auto:b0b0"}, Payload: RolloutChange{Action: ResumeRollout}}},
		{"rollout_start refused", Command{Envelope: Envelope{Service: "svc", Actor: "ops", IdemKey: "auto:c1c1", IdemHash: "auto:c1c1"}, Payload: RolloutStart{Spec: &RolloutSpec{To: "nope"}}}},
		{"set_weights opens a guard", Command{Envelope: Envelope{Service: "svc", Actor: "ops"}, Payload: SetWeights{Weights: Weights{"blue": 5000, "green": 5000}, Action: ChangeWeights}}},
		{"rollback auto of a guard", Command{Envelope: Envelope{Service: "svc", Actor: "watcher", Reason: "green p95 812.5 ms is above the rollback limit 800 ms", IdemKey: "decision:svc/guard/27/rollback", IdemHash: "rollback"}, Payload: Rollback{Trigger: TriggerAuto, GuardID: "27", Figures: figures("breach")}}},
		{"set_weights version mismatch", Command{Envelope: Envelope{Service: "svc", Actor: "ops", IfVersion: ptr(uint64(3)), IdemKey: "client:w-2", IdemHash: "1d1d"}, Payload: SetWeights{Weights: Weights{"blue": Total}, Action: ChangeWeights}}},
		{"set_weights replay", Command{Envelope: Envelope{Service: "svc", Actor: "ops", IfVersion: ptr(uint64(1)), IdemKey: "client:w-1", IdemHash: "9e0d"}, Payload: SetWeights{Weights: Weights{"blue": 9950, "canary": 50}, Action: ChangeWeights}}},
		{"set_weights key reused", Command{Envelope: Envelope{Service: "svc", Actor: "ops", IdemKey: "client:w-1", IdemHash: "ffff"}, Payload: SetWeights{Weights: Weights{"blue": Total}, Action: ChangeWeights}}},
		{"rollout_start default steps", Command{Envelope: Envelope{Service: "seeded", Actor: "ops"}, Payload: RolloutStart{Spec: &RolloutSpec{To: "b"}}}},
		{"set_weights refused while a rollout runs", Command{Envelope: Envelope{Service: "seeded", Actor: "ops"}, Payload: SetWeights{Weights: Weights{"b": Total}, Action: SwitchWeights}}},
		{"delete_service", Command{Envelope: Envelope{Service: "seeded", Actor: "admin", IfVersion: ptr(uint64(32)), IdemKey: "client:del", IdemHash: "d0d0"}, Payload: DeleteService{}}},
		{"delete_service missing", Command{Envelope: Envelope{Service: "seeded", Actor: "admin", IdemKey: "auto:e1e1", IdemHash: "auto:e1e1"}, Payload: DeleteService{}}},
		{"put_service replace", Command{Envelope: Envelope{Service: "svc", Actor: "admin", Reason: "new pools"}, Payload: PutService{Spec: &seed}}},
		{"put_notifier", Command{Envelope: Envelope{Actor: "admin", IfVersion: ptr(uint64(0)), IdemKey: "client:n-1", IdemHash: "4e4e"}, Payload: PutNotifier{Notifier: "pager", Spec: &NotifierSpec{
			URL: "https://hooks.example/T1/x?token=t", Service: "svc", Events: []string{"guard_breach", "rollout_rolled_back"}, Secret: "s3cret", Format: FormatSlack, Timeout: Duration(3 * time.Second),
		}}}},
		{"put_notifier seed", Command{Envelope: Envelope{Actor: "seed", IdemKey: "seed-notifier:chat:5f5f", IdemHash: "seed-notifier:chat:5f5f"}, Payload: PutNotifier{Notifier: "chat", Spec: &NotifierSpec{URL: "http://127.0.0.1:9900/hook"}, Seed: true}}},
		{"notify_cursor", Command{Envelope: Envelope{Actor: "notifier", IdemKey: "auto:f2f2", IdemHash: "auto:f2f2"}, Payload: NotifyCursor{Notifier: "pager", Delivery: NotifierDelivery{
			Through: 44, Sent: 3, Failed: 1, LastError: "event 41 (guard_breach): receiver answered 404 Not Found (not retried)", LastErrorAt: at(45), LastSuccessAt: at(46),
		}}}},
		{"record_event gate_refused", Command{Envelope: Envelope{Service: "svc", Actor: "ops", Reason: "refused: the pool would get traffic without a healthy backend: blue/10.0.0.11:8765 is draining"}, Payload: RecordEvent{Action: ActionGateRefused, Figures: map[string]any{
			"refused_by": "n2", "raised_pools": []any{"blue"}, "failing": []any{map[string]any{"pool": "blue", "address": "10.0.0.11:8765", "health": "healthy", "draining": true}},
		}}}},
		{"record_event node_lost", Command{Envelope: Envelope{Actor: "notifier", Reason: "the leader n1 has not reached voter n2", IdemKey: "node_lost:n2:1", IdemHash: "node_lost:n2:1"}, Payload: RecordEvent{Action: ActionNodeLost, Figures: map[string]any{"lost_node": "n2", "threshold": "30s"}}}},
		{"delete_notifier", Command{Envelope: Envelope{Actor: "admin", IfVersion: ptr(uint64(38)), IdemKey: "client:n-del", IdemHash: "6a6a"}, Payload: DeleteNotifier{Notifier: "chat"}}},
	}
}

// stepDecision is the watcher's step decision as it commits it.
func stepDecision(service string, r *Rollout, action RolloutAction, figures map[string]any) Command {
	c := StepDecision(service, r, action, figures)
	c.Reason = "step " + fmt.Sprint(r.Step) + " passed its hold"
	return c
}

// goldenTime stamps the i-th golden command (from 0) as the leader would.
func goldenTime(i int) time.Time {
	return time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC).Add(time.Duration(i+1) * time.Second)
}

// goldenLine is one entry: a name, the kind byte in hex and the JSON.
func goldenLine(name string, entry []byte) string {
	return fmt.Sprintf("%s\t%s\t%s", name, hex.EncodeToString(entry[:1]), entry[1:])
}

// readGolden returns the entries of a golden file by name, in order.
func readGolden(t *testing.T, path string) (names []string, entries [][]byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if sc.Text() == "" || strings.HasPrefix(sc.Text(), "#") {
			continue
		}
		parts := strings.SplitN(sc.Text(), "\t", 3)
		if len(parts) != 3 {
			t.Fatalf("%s: bad line %q", path, sc.Text())
		}
		kind, err := hex.DecodeString(parts[1])
		if err != nil || len(kind) != 1 {
			t.Fatalf("%s: bad kind in %q", path, sc.Text())
		}
		names = append(names, parts[0])
		entries = append(entries, append(kind, parts[2]...))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return names, entries
}

func writeGolden(t *testing.T, path, header string, lines []string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(header+strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

const goldenHeader = "# Log entries as cbproxy writes them: name, kind byte (hex), JSON; tab-separated.\n" +
	"# Written by the build before typed commands. Never regenerate: see golden_test.go.\n"

// TestEncodingGolden: every kind of command, built as cbproxy builds it,
// encodes to the bytes the build before typed commands wrote.
func TestEncodingGolden(t *testing.T) {
	var lines []string
	for i, g := range goldenCommands() {
		c := g.cmd
		c.Time = goldenTime(i)
		entry, err := Encode(c)
		if err != nil {
			t.Fatalf("%s: %v", g.name, err)
		}
		lines = append(lines, goldenLine(g.name, entry))
	}
	if *updateGolden {
		writeGolden(t, goldenEntries, goldenHeader, lines)
	}
	names, entries := readGolden(t, goldenEntries)
	if len(entries) != len(lines) {
		t.Fatalf("%d golden entries, %d commands", len(entries), len(lines))
	}
	for i := range lines {
		if want := goldenLine(names[i], entries[i]); lines[i] != want {
			t.Errorf("entry %d encodes differently:\n got %s\nwant %s", i, lines[i], want)
		}
	}
}

// TestScriptEncodingGolden: the commands of script(), which seed FuzzApply's
// corpus, encode to the same bytes as before typed commands, so the corpus
// still means what it meant.
func TestScriptEncodingGolden(t *testing.T) {
	var lines []string
	for i, c := range script() {
		entry, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, goldenLine(fmt.Sprint(i), entry))
	}
	if *updateGolden {
		writeGolden(t, goldenScript, goldenHeader, lines)
	}
	names, entries := readGolden(t, goldenScript)
	if len(entries) != len(lines) {
		t.Fatalf("%d golden entries, %d commands", len(entries), len(lines))
	}
	for i := range lines {
		if want := goldenLine(names[i], entries[i]); lines[i] != want {
			t.Errorf("script command %d encodes differently:\n got %s\nwant %s", i, lines[i], want)
		}
	}
}

// TestGoldenEntriesApply: the golden entries decode, encode back to the same
// bytes, are applicable by the baseline (those of the kinds it has: later
// kinds, such as the notifiers', came after it), and applied in order give
// the results and the snapshot the build before typed commands gave, then
// those the later kinds appended.
func TestGoldenEntriesApply(t *testing.T) {
	names, entries := readGolden(t, goldenEntries)
	m := NewMachine(Options{})
	var results []string
	var baselineSnap []byte // the state before the first entry of a later kind
	for i, entry := range entries {
		baselineKind := slices.Contains(Baseline().Kinds, Kind(entry[0]))
		if lacks := Baseline().Lacks(entry); lacks != nil && baselineKind {
			t.Errorf("%s: the baseline lacks %v", names[i], lacks)
		}
		if !baselineKind && baselineSnap == nil {
			baselineSnap = snapshotBytes(t, m)
		}
		c, err := Decode(entry)
		if err != nil {
			t.Fatalf("%s: %v", names[i], err)
		}
		again, err := Encode(c)
		if err != nil || !bytes.Equal(again, entry) {
			t.Errorf("%s: decoded and encoded again:\n got %s (%v)\nwant %s", names[i], again, err, entry)
		}
		r := m.Apply(uint64(i+1), entry)
		if r.Code == CodeUnsupported {
			t.Fatalf("%s: %+v", names[i], r)
		}
		results = append(results, fmt.Sprintf("%s\tcode=%q error=%q version=%d index=%d changed=%t replayed=%t", names[i], r.Code, r.Err, r.Version, r.Index, r.Changed, r.Replayed))
	}
	snap := snapshotBytes(t, m)
	if baselineSnap == nil {
		baselineSnap = snap
	}
	if *updateGolden {
		// The baseline's snapshot is never rewritten: it is what the build
		// before typed commands gave, and must stay byte for byte.
		writeGolden(t, goldenResults, "# What applying testdata/entries.golden in order gives, one result per entry.\n", results)
		if err := os.WriteFile(goldenSnapshotLatest, snap, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(goldenResults)
	if err != nil {
		t.Fatal(err)
	}
	wantLines := strings.Split(strings.TrimSuffix(string(want), "\n"), "\n")[1:]
	if len(wantLines) != len(results) {
		t.Fatalf("%d golden results, %d entries", len(wantLines), len(results))
	}
	for i := range results {
		if results[i] != wantLines[i] {
			t.Errorf("result %d differs:\n got %s\nwant %s", i, results[i], wantLines[i])
		}
	}
	for _, golden := range []struct {
		file, what string
		got        []byte
	}{
		{goldenSnapshot, "the baseline's kinds", baselineSnap},
		{goldenSnapshotLatest, "every kind", snap},
	} {
		want, err := os.ReadFile(golden.file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(golden.got, want) {
			t.Errorf("the state after the golden entries of %s differs from %s:\n got %s\nwant %s", golden.what, golden.file, golden.got, want)
		}
	}
}

package cli

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func collectSSE(input string) ([]sseEvent, error) {
	var got []sseEvent
	err := readSSE(strings.NewReader(input), func(e sseEvent) error {
		got = append(got, e)
		return nil
	})
	return got, err
}

func TestReadSSE(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []sseEvent
	}{
		{name: "empty"},
		{
			name:  "one event",
			input: "id: 57\nevent: weights\ndata: {\"index\":57}\n\n",
			want:  []sseEvent{{id: "57", event: "weights", data: `{"index":57}`}},
		},
		{
			name:  "data lines join with newlines; no space after the colon",
			input: "data:a\ndata:  b\ndata\n\n",
			want:  []sseEvent{{data: "a\n b\n"}},
		},
		{
			name:  "comments, unknown fields and empty events are skipped",
			input: ": ping\n\nretry: 100\nfoo: bar\n\nevent: x\n\ndata: 1\n\n",
			want:  []sseEvent{{data: "1"}},
		},
		{
			name:  "the id carries over; the event type does not",
			input: "id: 7\nevent: pool\ndata: a\n\ndata: b\n\n",
			want:  []sseEvent{{id: "7", event: "pool", data: "a"}, {id: "7", data: "b"}},
		},
		{
			name:  "CRLF and CR line ends",
			input: "id: 1\r\ndata: x\r\n\r\ndata: y\rdata: z\r\r",
			want:  []sseEvent{{id: "1", data: "x"}, {id: "1", data: "y\nz"}},
		},
		{
			name:  "an unfinished event is dropped",
			input: "data: done\n\ndata: cut",
			want:  []sseEvent{{data: "done"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := collectSSE(tt.input)
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestReadSSEErrors(t *testing.T) {
	if _, err := collectSSE("data: " + strings.Repeat("x", maxEventLine) + "\n\n"); err == nil {
		t.Error("a line over the limit was accepted")
	}
	stop := errors.New("stop")
	calls := 0
	err := readSSE(strings.NewReader("data: 1\n\ndata: 2\n\n"), func(sseEvent) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("err %v after %d calls; want the callback's error after 1", err, calls)
	}
}

// FuzzReadSSE reads arbitrary streams: no panic, and writing the events read
// back out as a stream reads the same events again.
func FuzzReadSSE(f *testing.F) {
	for _, seed := range []string{
		"id: 57\nevent: weights\ndata: {\"index\":57}\n\n",
		"data:a\ndata:  b\ndata\n\n: c\n\n",
		"id: 1\r\ndata: x\r\n\r\nid\nevent\n\n",
		"data: cut",
		"\n\n\ndata: \x00\n\n",
		"id: 150\nevent: gap\ndata: {\"action\":\"gap\",\"from\":11,\"to\":150,\"reason\":\"the trail no longer holds the events from index 11 to 150\"}\n\nid: 151\nevent: drain\ndata: {\"index\":151}\n\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		events, err := collectSSE(input)
		if err != nil {
			return
		}
		var b strings.Builder
		for _, e := range events {
			fmt.Fprintf(&b, "id: %s\nevent: %s\n", e.id, e.event)
			for line := range strings.SplitSeq(e.data, "\n") {
				fmt.Fprintf(&b, "data: %s\n", line)
			}
			b.WriteString("\n")
		}
		again, err := collectSSE(b.String())
		if err != nil || !slices.Equal(again, events) {
			t.Fatalf("events %+v written and read again give %+v, %v", events, again, err)
		}
	})
}

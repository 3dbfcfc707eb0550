package cli

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// sseEvent is one server-sent event.
type sseEvent struct {
	id, event, data string
}

// maxEventLine bounds one line of an event stream; an event's figures are a
// few kilobytes.
const maxEventLine = 1 << 20

// readSSE reads a text/event-stream (the HTML "server-sent events" format) and
// calls fn with each event until the stream ends, fn fails or a line is too
// long. Comments and unknown fields are skipped, several data lines are joined
// with newlines, and an event not ended by a blank line is dropped, as
// browsers do.
func readSSE(r io.Reader, fn func(sseEvent) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxEventLine)
	sc.Split(scanLines)
	var ev sseEvent
	var data []string
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if data != nil {
				ev.data = strings.Join(data, "\n")
				if err := fn(ev); err != nil {
					return err
				}
			}
			ev, data = sseEvent{id: ev.id}, nil
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			ev.id = value
		case "event":
			ev.event = value
		case "data":
			data = append(data, value)
		}
	}
	return sc.Err()
}

// scanLines is a bufio.SplitFunc for the line ends of the format: "\r\n",
// "\n" or "\r".
func scanLines(data []byte, atEOF bool) (int, []byte, error) {
	i := bytes.IndexAny(data, "\r\n")
	switch {
	case i < 0 && atEOF && len(data) > 0:
		return len(data), data, nil
	case i < 0:
		return 0, nil, nil
	case data[i] == '\r' && i+1 == len(data) && !atEOF:
		return 0, nil, nil // a "\n" may follow
	case data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n':
		return i + 2, data[:i], nil
	}
	return i + 1, data[:i], nil
}

package cli

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// countingWriter counts the writes a command makes to its stdout: each one is
// a system call on a terminal or a pipe.
type countingWriter struct {
	writes int
	b      strings.Builder
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.b.Write(p)
}

// TestOutputBuffered checks that a command prints its table in a few writes,
// not one per cell: at 1,000 services `cbproxy status` spent a third of its
// 100 ms in write system calls of text/tabwriter's padding.
func TestOutputBuffered(t *testing.T) {
	admin, _ := startNode(t)
	for i := range 40 {
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/v1/services/s%02d", admin, i),
			strings.NewReader(`{"pools":{"blue":{"backends":["127.0.0.1:9","127.0.0.2:9"]},"canary":{"backends":["127.0.0.3:9"]}}}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	for _, argv := range [][]string{{"status"}, {"events", "--limit", "100"}, {"cluster", "status"}} {
		var stdout, stderr countingWriter
		r := &runner{stdout: &stdout, stderr: &stderr, getenv: envOf(map[string]string{"CBPROXY_ADMIN": admin}), retryFor: time.Second}
		if code := r.run(context.Background(), argv[0], argv[1:]); code != exitOK {
			t.Fatalf("%v: exit %d: %s", argv, code, stderr.b.String())
		}
		// 64 kB per write at most, and one for the end.
		if max := stdout.b.Len()/(64<<10) + 1; stdout.writes > max {
			t.Errorf("%v: %d bytes in %d writes, want at most %d", argv, stdout.b.Len(), stdout.writes, max)
		}
	}
}

package raftnode

import (
	"strings"

	"github.com/hashicorp/go-hclog"
)

// hclogger routes hashicorp/raft's logs into the node's zap logger (Caddy's
// logging), at warn and above: raft's info and debug chatter is not useful to
// operators.
func (n *Node) hclogger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:            "raft",
		Level:           hclog.Warn,
		Output:          zapWriter{n},
		DisableTime:     true,
		IncludeLocation: false,
	})
}

type zapWriter struct{ n *Node }

func (w zapWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	l := w.n.log().Named("raft")
	switch {
	case strings.Contains(line, "[ERROR]"):
		l.Error(line)
	default:
		l.Warn(line)
	}
	return len(p), nil
}

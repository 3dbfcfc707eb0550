package slo

import (
	"testing"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

func TestOneOrTwoFailuresNeverRollBack(t *testing.T) {
	win := func(req, errs uint64) Window {
		w := Window{Requests: req, Errors: errs, Buckets: make([]uint64, len(Bounds)+1)}
		w.Buckets[0] = req
		return w
	}
	for _, tc := range []struct {
		req, errs uint64
		want      Result
	}{{1, 1, Hold}, {2, 2, Hold}, {10, 2, Hold}, {3, 3, Breach}, {40, 40, Breach}} {
		v := Judge(state.DefaultSLO, "canary", win(tc.req, tc.errs), Nodes{Reporting: 3}, "", Window{}, Nodes{})
		if v.Result != tc.want {
			t.Errorf("%d of %d failing: %s (%s), want %s", tc.errs, tc.req, v.Result, v.Reason, tc.want)
		}
	}
}

package state

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestDurationString(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{500 * time.Millisecond, "500ms"},
		{2 * time.Second, "2s"},
		{90 * time.Second, "1m30s"},
		{10 * time.Minute, "10m"},
		{time.Hour, "1h"},
		{90 * time.Minute, "1h30m"},
		{time.Hour + 30*time.Second, "1h30s"},
		{time.Hour + 1500*time.Millisecond, "1h1.5s"},
		{10*time.Hour + 10*time.Minute, "10h10m"},
		{1500 * time.Microsecond, "1.5ms"},
	} {
		got := Duration(tc.d).String()
		if got != tc.want {
			t.Errorf("Duration(%v).String() = %q, want %q", tc.d, got, tc.want)
		}
		back, err := time.ParseDuration(got)
		if err != nil || back != tc.d {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", got, back, err, tc.d)
		}
	}
}

func TestDurationJSON(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Duration
		wantErr string
	}{
		{in: `"2s"`, want: Duration(2 * time.Second)},
		{in: `"1m30s"`, want: Duration(90 * time.Second)},
		{in: `"0s"`, want: 0},
		{in: `"10m"`, want: Duration(10 * time.Minute)},
		{in: `null`, want: 7}, // unchanged
		{in: `2`, wantErr: `duration must be a string like "2s" or "10m", not 2`},
		{in: `{}`, wantErr: "must be a string"},
		{in: `"-1s"`, wantErr: `duration "-1s" is negative`},
		{in: `"2 s"`, wantErr: `duration "2 s" is not valid`},
		{in: `"10"`, wantErr: "is not valid"},
		{in: `""`, wantErr: "is not valid"},
	} {
		d := Duration(7)
		err := json.Unmarshal([]byte(tc.in), &d)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("unmarshal %s = %v, %v; want error containing %q", tc.in, d, err, tc.wantErr)
			}
			continue
		}
		if err != nil || d != tc.want {
			t.Errorf("unmarshal %s = %v, %v; want %v", tc.in, time.Duration(d), err, time.Duration(tc.want))
		}
	}
	b, err := json.Marshal(struct{ G Duration }{Duration(10 * time.Minute)})
	if err != nil || string(b) != `{"G":"10m"}` {
		t.Errorf("marshal = %s, %v", b, err)
	}
}

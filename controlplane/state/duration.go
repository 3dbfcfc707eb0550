package state

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration that reads and writes as a Go duration string
// ("2s", "10m") in JSON.
type Duration time.Duration

// ParseDuration reads a Go duration string ("500ms", "2s", "1m30s", "10m")
// that is not negative.
func ParseDuration(s string) (Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q is not valid; write it like 500ms, 2s, 1m30s or 10m", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("duration %q is negative", s)
	}
	return Duration(d), nil
}

// String formats d as the shortest Go duration text: "10m" rather than
// time.Duration's "10m0s", "1h30s" rather than "1h0m30s".
func (d Duration) String() string {
	s := time.Duration(d).String()
	s = strings.Replace(s, "h0m", "h", 1)
	if strings.HasSuffix(s, "m0s") || strings.HasSuffix(s, "h0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	return s
}

// MarshalJSON writes d as a JSON string like "2s".
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(strconv.Quote(d.String())), nil
}

// UnmarshalJSON reads a JSON string like "2s"; null leaves d unchanged (the
// field then takes its default).
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"2s\" or \"10m\", not %s", b)
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

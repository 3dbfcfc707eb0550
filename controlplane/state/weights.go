package state

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Weight is a pool's share of traffic in hundredths of a percent: 10000 is
// 100 %, 1 is 0.01 % (the contract's granularity). Integers keep the sum exact.
type Weight int32

// Total is the sum every service's weights must have.
const Total Weight = 10000

// exponent matches a number in scientific notation, to say why it is refused.
var exponent = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?[eE][+-]?[0-9]+$`)

// ParseWeight reads a percentage written as plain decimal text with at most two
// decimals: "99", "99.5", "0.01", "100.00". The syntax is that of a JSON number
// without sign or exponent, so "007", ".5" and "5." are refused as well: what
// the CLI accepts can be sent on as a JSON number unchanged.
func ParseWeight(s string) (Weight, error) {
	if s == "" {
		return 0, fmt.Errorf("weight is empty; give a number of percent like 99.5")
	}
	if s[0] == '-' {
		return 0, fmt.Errorf("weight %q is negative; a weight is a percentage from 0 to 100", s)
	}
	intPart, frac, hasDot := strings.Cut(s, ".")
	if !allDigits(intPart) || hasDot && !allDigits(frac) {
		if exponent.MatchString(s) {
			return 0, fmt.Errorf("weight %q has an exponent; write it as a plain decimal like 0.5", s)
		}
		return 0, fmt.Errorf("weight %q is not a number; give a number of percent like 99.5", s)
	}
	if len(intPart) > 1 && intPart[0] == '0' {
		return 0, fmt.Errorf("weight %q has a leading zero; write the number without it, like 7 or 0.5", s)
	}
	if len(frac) > 2 {
		return 0, fmt.Errorf("weight %q has more than two decimals; use at most two (granularity 0.01 %%)", s)
	}
	// Beyond three digits the value is over 100 anyway; this also keeps Atoi
	// from overflowing on very long input.
	if len(intPart) > 3 {
		return 0, fmt.Errorf("weight %q is more than 100", s)
	}
	whole, _ := strconv.Atoi(intPart)
	hundredths, _ := strconv.Atoi((frac + "00")[:2])
	w := Weight(whole*100 + hundredths)
	if w > Total {
		return 0, fmt.Errorf("weight %q is more than 100", s)
	}
	return w, nil
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// String formats w as the shortest decimal text of its percentage: "99",
// "99.5", "0.01".
func (w Weight) String() string {
	sign := ""
	n := int64(w)
	if n < 0 {
		sign, n = "-", -n
	}
	s := sign + strconv.FormatInt(n/100, 10)
	if frac := n % 100; frac != 0 {
		s += strings.TrimRight(fmt.Sprintf(".%02d", frac), "0")
	}
	return s
}

// MarshalJSON writes w as a bare JSON number of percent.
func (w Weight) MarshalJSON() ([]byte, error) {
	return []byte(w.String()), nil
}

// UnmarshalJSON reads a JSON number of percent; a string (even "99.5") is an
// error, so that a typed client and a hand-written body agree.
func (w *Weight) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return fmt.Errorf("weight must be a number of percent, like 99.5, not the string %s", b)
	}
	v, err := ParseWeight(string(b))
	if err != nil {
		return err
	}
	*w = v
	return nil
}

// Weights maps pool names to shares. In JSON each share is a plain number of
// percent with at most two decimals: {"blue": 99.5, "canary": 0.5}.
type Weights map[string]Weight

// UnmarshalJSON reads an object of pool names to numbers of percent and names
// the pool in any error.
func (ws *Weights) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("weights must be an object of pool names to numbers of percent, like {\"blue\": 99, \"canary\": 1}")
	}
	if raw == nil {
		*ws = nil
		return nil
	}
	out := make(Weights, len(raw))
	for _, pool := range sortedKeys(raw) {
		var w Weight
		if err := w.UnmarshalJSON(raw[pool]); err != nil {
			return fmt.Errorf("pool %q: %w", pool, err)
		}
		out[pool] = w
	}
	*ws = out
	return nil
}

// Sum is the total of all shares. It saturates at the limits of Weight, so
// that a huge list of shares cannot wrap around to exactly 100.
func (ws Weights) Sum() Weight {
	var sum int64
	for _, w := range ws {
		sum += int64(w)
	}
	return Weight(max(math.MinInt32, min(math.MaxInt32, sum)))
}

// Equal reports whether ws and other give every pool the same share; a pool
// missing from one of them counts as 0.
func (ws Weights) Equal(other Weights) bool {
	for p, w := range ws {
		if other[p] != w {
			return false
		}
	}
	for p, w := range other {
		if ws[p] != w {
			return false
		}
	}
	return true
}

// Validate checks ws as a weight update for a service with the given pools:
// every named pool must exist, every share must lie between 0 and 100, and the
// shares must sum to exactly 100. Pools left out count as 0.
func (ws Weights) Validate(pools []string) error {
	known := make(map[string]bool, len(pools))
	for _, p := range pools {
		known[p] = true
	}
	for _, p := range sortedKeys(ws) {
		if !known[p] {
			return fmt.Errorf("weights name pool %q, which the service does not have; its pools are %s", p, strings.Join(sorted(pools), ", "))
		}
		if w := ws[p]; w < 0 || w > Total {
			return fmt.Errorf("weight %s of pool %q is out of range; a weight is a percentage from 0 to 100", w, p)
		}
	}
	if sum := ws.Sum(); sum != Total {
		return fmt.Errorf("weights sum to %s, not 100; give the shares so that they add up to exactly 100 (a pool left out gets 0)", sum)
	}
	return nil
}

// Fill returns a copy of ws that lists every one of pools, with 0 for those
// ws leaves out. Names in ws that are not in pools are dropped.
func (ws Weights) Fill(pools []string) Weights {
	out := make(Weights, len(pools))
	for _, p := range pools {
		out[p] = ws[p]
	}
	return out
}

// String lists the shares in pool name order: "blue=99 canary=1 green=0".
func (ws Weights) String() string {
	parts := make([]string, 0, len(ws))
	for _, p := range sortedKeys(ws) {
		parts = append(parts, p+"="+ws[p].String())
	}
	return strings.Join(parts, " ")
}

// sortedKeys returns the keys of m in order, so that nothing observable
// depends on map iteration order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

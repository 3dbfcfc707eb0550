package state

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
)

func TestParseWeight(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Weight
		wantErr string
	}{
		{in: "0", want: 0},
		{in: "99", want: 9900},
		{in: "99.5", want: 9950},
		{in: "99.50", want: 9950},
		{in: "0.01", want: 1},
		{in: "0.1", want: 10},
		{in: "100", want: 10000},
		{in: "100.00", want: 10000},
		{in: "5", want: 500},
		{in: "", wantErr: "weight is empty"},
		{in: "-1", wantErr: "negative"},
		{in: "-0", wantErr: "negative"},
		{in: "100.01", wantErr: "more than 100"},
		{in: "101", wantErr: "more than 100"},
		{in: "99999999999999999999999", wantErr: "more than 100"},
		{in: "99.123", wantErr: `weight "99.123" has more than two decimals; use at most two (granularity 0.01 %)`},
		{in: "0.001", wantErr: "more than two decimals"},
		{in: "1e2", wantErr: "exponent"},
		{in: "1.5E-1", wantErr: "exponent"},
		{in: "NaN", wantErr: "not a number"},
		{in: "Inf", wantErr: "not a number"},
		{in: "+5", wantErr: "not a number"},
		{in: "abc", wantErr: "not a number"},
		{in: ".5", wantErr: "not a number"},
		{in: "5.", wantErr: "not a number"},
		{in: " 5", wantErr: "not a number"},
		{in: "5%", wantErr: "not a number"},
		{in: "1.2.3", wantErr: "not a number"},
		{in: "007", wantErr: "leading zero"},
		{in: "00.5", wantErr: "leading zero"},
	} {
		got, err := ParseWeight(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseWeight(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseWeight(%q) = %v, %v; want %v", tc.in, got, err, int(tc.want))
		}
	}
}

func TestWeightString(t *testing.T) {
	for _, tc := range []struct {
		w    Weight
		want string
	}{
		{0, "0"}, {1, "0.01"}, {10, "0.1"}, {50, "0.5"}, {9900, "99"}, {9950, "99.5"},
		{9999, "99.99"}, {10000, "100"}, {105, "1.05"}, {-150, "-1.5"},
	} {
		if got := tc.w.String(); got != tc.want {
			t.Errorf("Weight(%d).String() = %q, want %q", int(tc.w), got, tc.want)
		}
		if tc.w >= 0 {
			back, err := ParseWeight(tc.want)
			if err != nil || back != tc.w {
				t.Errorf("ParseWeight(%q) = %v, %v; want %d", tc.want, back, err, int(tc.w))
			}
		}
	}
}

func TestWeightsJSON(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Weights
		wantErr string
	}{
		{in: `{"blue": 99.5, "canary": 0.5}`, want: Weights{"blue": 9950, "canary": 50}},
		{in: `{"blue": 100, "green": 0}`, want: Weights{"blue": 10000, "green": 0}},
		{in: `null`, want: nil},
		{in: `{"blue": "99.5"}`, wantErr: `pool "blue": weight must be a number of percent, like 99.5`},
		{in: `{"blue": -1}`, wantErr: `pool "blue": weight "-1" is negative`},
		{in: `{"blue": 1e2}`, wantErr: "exponent"},
		{in: `{"blue": 99.123}`, wantErr: "more than two decimals"},
		{in: `{"blue": null}`, wantErr: "not a number"},
		{in: `{"blue": true}`, wantErr: "not a number"},
		{in: `[1]`, wantErr: "weights must be an object"},
		{in: `"blue"`, wantErr: "weights must be an object"},
	} {
		var got Weights
		err := json.Unmarshal([]byte(tc.in), &got)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("unmarshal %s = %v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !got.Equal(tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("unmarshal %s = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}

	b, err := json.Marshal(Weights{"canary": 50, "blue": 9950, "green": 0})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"blue":99.5,"canary":0.5,"green":0}`; string(b) != want {
		t.Errorf("marshal = %s, want %s", b, want)
	}
}

func TestWeightsValidate(t *testing.T) {
	pools := []string{"green", "blue", "canary"}
	for _, tc := range []struct {
		name    string
		w       Weights
		wantErr string
	}{
		{name: "all listed", w: Weights{"blue": 9900, "canary": 100, "green": 0}},
		{name: "left out gets 0", w: Weights{"blue": 9950, "canary": 50}},
		{name: "one pool", w: Weights{"green": 10000}},
		{name: "unknown pool", w: Weights{"purple": 10000}, wantErr: `weights name pool "purple", which the service does not have; its pools are blue, canary, green`},
		{name: "unknown pool with 0", w: Weights{"blue": 10000, "purple": 0}, wantErr: `weights name pool "purple"`},
		{name: "sum low", w: Weights{"blue": 9950}, wantErr: "weights sum to 99.5, not 100"},
		{name: "sum high", w: Weights{"blue": 10000, "canary": 1}, wantErr: "weights sum to 100.01, not 100"},
		{name: "empty", w: Weights{}, wantErr: "weights sum to 0, not 100"},
		{name: "negative", w: Weights{"blue": 10000, "canary": -100}, wantErr: `weight -1 of pool "canary" is out of range`},
		{name: "over 100", w: Weights{"blue": 10100, "canary": -100}, wantErr: `weight 101 of pool "blue" is out of range`},
	} {
		err := tc.w.Validate(pools)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: Validate(%v) = %v, want error %q", tc.name, tc.w, err, tc.wantErr)
		}
	}
}

func TestWeightsHelpers(t *testing.T) {
	w := Weights{"blue": 9900, "canary": 100, "gone": 0}
	filled := w.Fill([]string{"blue", "canary", "green"})
	if want := (Weights{"blue": 9900, "canary": 100, "green": 0}); len(filled) != 3 || !filled.Equal(want) {
		t.Errorf("Fill = %v, want %v", filled, want)
	}
	if _, ok := filled["gone"]; ok {
		t.Errorf("Fill kept a pool outside the list: %v", filled)
	}
	if w.Sum() != 10000 {
		t.Errorf("Sum = %v", w.Sum())
	}
	if !w.Equal(Weights{"blue": 9900, "canary": 100}) {
		t.Error("Equal must treat a missing pool as 0")
	}
	if w.Equal(Weights{"blue": 9900, "canary": 100, "x": 1}) || w.Equal(Weights{"blue": 10000}) {
		t.Error("Equal reported different weights as equal")
	}
	huge := Weights{}
	for i := 0; i < 300000; i++ {
		huge[fmt.Sprint("p", i)] = Total
	}
	if huge.Sum() != math.MaxInt32 || huge.Validate(sortedKeys(huge)) == nil {
		t.Errorf("a sum beyond the range of Weight must saturate, got %d", huge.Sum())
	}
	if got, want := filled.String(), "blue=99 canary=1 green=0"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

package jcs

import (
	"bytes"
	"encoding/json"
	"math/big"
	"reflect"
	"testing"
)

func FuzzCanonicalize(f *testing.F) {
	for _, s := range []string{
		`{"z":1,"a":[true,false,null,"x"]}`, `1e21`, `-0.0`, `9007199254740993`,
		`18446744073709551615`, `-9223372036854775808`, `"\ud83d\ude00\u001f\u007f"`,
		`{"\ue000":1,"\ud800\udc00":2}`, `[1.5e-7, 0.30000000000000004, 5e-324]`,
		`{"a":{"b":{"c":[]}}}`, `"\ud800"`, `{"a":1,"a":2}`, "\"\xff\"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Canonicalize(in)
		if err != nil {
			return
		}
		// Anything accepted is JSON that encoding/json accepts too.
		if !json.Valid(in) {
			t.Fatalf("accepted invalid json %q", in)
		}
		// Idempotent: the canonical form is a fixed point (checked with the
		// full parser, not the already-canonical shortcut).
		again, err := appendParsed(nil, out)
		if err != nil {
			t.Fatalf("canonical output %q rejected: %v", out, err)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("not idempotent:\n in %q\nout %q\nagain %q", in, out, again)
		}
		// Same JSON value: compare the decoded trees, numbers by value.
		a, b := decode(t, in), decode(t, out)
		if !sameValue(a, b) {
			t.Fatalf("value changed:\n in %q\nout %q", in, out)
		}
	})
}

func decode(t *testing.T, data []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %q: %v", data, err)
	}
	return v
}

// sameValue compares decoded JSON; numbers are equal when both are the same
// exact integer or round to the same float64 (canonical form keeps exact
// integers in i64/u64 and uses the double everywhere else).
func sameValue(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		xi, okx := new(big.Int).SetString(string(x), 10)
		yi, oky := new(big.Int).SetString(string(y), 10)
		if okx && oky && xi.IsInt64() || okx && oky && xi.IsUint64() {
			return xi.Cmp(yi) == 0
		}
		xf, err1 := x.Float64()
		yf, err2 := y.Float64()
		return err1 == nil && err2 == nil && xf == yf
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameValue(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !sameValue(v, w) {
				return false
			}
		}
		return true
	default:
		return reflect.DeepEqual(a, b)
	}
}

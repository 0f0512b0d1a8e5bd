package jcs

import (
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

type canonicalVectors struct {
	Cases []struct {
		ID            string `json:"id"`
		Description   string `json:"description"`
		InputJSON     string `json:"input_json"`
		CanonicalJSON string `json:"canonical_json"`
	} `json:"cases"`
}

func TestConformanceCanonical(t *testing.T) {
	var vec canonicalVectors
	testutil.ChioVectors(t, "canonical", 23, &vec)
	for _, c := range vec.Cases {
		t.Run(c.ID, func(t *testing.T) {
			got, err := Canonicalize([]byte(c.InputJSON))
			if err != nil {
				t.Fatalf("%s: %v", c.Description, err)
			}
			if string(got) != c.CanonicalJSON {
				t.Fatalf("%s\n got %q\nwant %q", c.Description, got, c.CanonicalJSON)
			}
			// The canonical form is a fixed point.
			again, err := Canonicalize(got)
			if err != nil || string(again) != c.CanonicalJSON {
				t.Fatalf("not idempotent: %q, %v", again, err)
			}
			// Marshal of the decoded value agrees (numbers kept as text).
			dec := json.NewDecoder(strings.NewReader(c.InputJSON))
			dec.UseNumber()
			var v any
			if err := dec.Decode(&v); err != nil {
				t.Fatal(err)
			}
			m, err := Marshal(v)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			if string(m) != c.CanonicalJSON {
				t.Fatalf("marshal\n got %q\nwant %q", m, c.CanonicalJSON)
			}
		})
	}
}

func TestCanonicalizeRejects(t *testing.T) {
	cases := []struct {
		in   string
		want error
	}{
		{"", ErrSyntax},
		{"   ", ErrSyntax},
		{"{", ErrSyntax},
		{`{"a":1,}`, ErrSyntax},
		{`[1,]`, ErrSyntax},
		{`[1 2]`, ErrSyntax},
		{`{"a" 1}`, ErrSyntax},
		{`{a:1}`, ErrSyntax},
		{`01`, ErrSyntax},
		{`1.`, ErrSyntax},
		{`.5`, ErrSyntax},
		{`1e`, ErrSyntax},
		{`+1`, ErrSyntax},
		{`-`, ErrSyntax},
		{`NaN`, ErrSyntax},
		{`Infinity`, ErrSyntax},
		{`tru`, ErrSyntax},
		{`nul`, ErrSyntax},
		{`"abc`, ErrSyntax},
		{"\"a\tb\"", ErrSyntax},
		{`"\x"`, ErrSyntax},
		{`"\u12"`, ErrSyntax},
		{`"\u12G4"`, ErrSyntax},
		{`1 2`, ErrSyntax},
		{`{} x`, ErrSyntax},
		{"\ufeff{}", ErrSyntax}, // a BOM is not JSON whitespace
		{`{"a":1,"a":2}`, ErrDuplicateKey},
		{`{"a":1,"\u0061":2}`, ErrDuplicateKey},
		{`{"x":{"b":1,"c":[{"k":1,"k":1}]}}`, ErrDuplicateKey},
		{"\"\xff\"", ErrInvalidUTF8},
		{"\"\xc3\x28\"", ErrInvalidUTF8},
		{"\"\xed\xa0\x80\"", ErrInvalidUTF8}, // surrogate encoded in UTF-8
		{"{\"\xff\":1}", ErrInvalidUTF8},
		{`"\ud800"`, ErrInvalidUTF8},
		{`"\udc00"`, ErrInvalidUTF8},
		{`"\ud800\u0041"`, ErrInvalidUTF8},
		{`"\ud800x"`, ErrInvalidUTF8},
		{`1e400`, ErrNumberRange},
		{`-1e400`, ErrNumberRange},
		{strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1), ErrTooDeep},
	}
	for _, c := range cases {
		out, err := Canonicalize([]byte(c.in))
		if !errors.Is(err, c.want) {
			t.Errorf("Canonicalize(%q) = %q, %v; want error %v", c.in, out, err, c.want)
			continue
		}
		var se *SyntaxError
		if !errors.As(err, &se) {
			t.Errorf("Canonicalize(%q): error %v is not a *SyntaxError", c.in, err)
		}
		if !strings.HasPrefix(err.Error(), "canonicalize json: ") {
			t.Errorf("error %q lacks its verb prefix", err)
		}
	}
}

func TestCanonicalizeAccepts(t *testing.T) {
	cases := map[string]string{
		" \t\r\n{ \"b\" : [ 1 , 2 ] , \"a\" : null } \n": `{"a":null,"b":[1,2]}`,
		`"\/\b\f\n\r\t\u0000\u00e9\u20ac"`:               "\"/\\b\\f\\n\\r\\t\\u0000é€\"",
		`"\ud83d\ude00"`:                                 `"😀"`,
		`"\u2028\u2029<>&"`:                              "\"\u2028\u2029<>&\"",
		`-0`:                                             `0`,
		`0`:                                              `0`,
		`-9223372036854775809`:                           `-9223372036854776000`, // below i64: float path
		`18446744073709551616`:                           `18446744073709552000`, // above u64: float path
		`100000000000000000000000`:                       `1e+23`,
		`1E2`:                                            `100`,
		`1e-6`:                                           `0.000001`,
		`12.5e-1`:                                        `1.25`,
		`1.5e300`:                                        `1.5e+300`,
		`[[[]],{}]`:                                      `[[[]],{}]`,
		strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth): strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth),
	}
	for in, want := range cases {
		got, err := Canonicalize([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("Canonicalize(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

var tenth = 0.1

func TestAppendFloatECMAScript(t *testing.T) {
	// Expected strings are what ECMAScript's Number.prototype.toString
	// prints, including the RFC 8785 appendix examples.
	cases := []struct {
		f    float64
		want string
	}{
		{0, "0"},
		{math.Copysign(0, -1), "0"},
		{1, "1"},
		{-1.5, "-1.5"},
		{0.1, "0.1"},
		{tenth + 2*tenth, "0.30000000000000004"}, // at run time, not constant-folded
		{123.456, "123.456"},
		{1e20, "100000000000000000000"},
		{1e21, "1e+21"},
		{123456789012345680000, "123456789012345680000"},
		{1.2345678901234568e21, "1.2345678901234568e+21"},
		{0.000001, "0.000001"},
		{0.0000012, "0.0000012"},
		{1e-7, "1e-7"},
		{1.5e-7, "1.5e-7"},
		{5e-324, "5e-324"},
		{-5e-324, "-5e-324"},
		{math.MaxFloat64, "1.7976931348623157e+308"},
		{-math.MaxFloat64, "-1.7976931348623157e+308"},
		{9007199254740992, "9007199254740992"},
		{333333333.33333329, "333333333.3333333"},
		{1e30, "1e+30"},
		{4.50, "4.5"},
		{2e-3, "0.002"},
		{0.000000000000000000000000001, "1e-27"},
		{295147905179352830000, "295147905179352830000"},
	}
	for _, c := range cases {
		got, err := AppendFloat(nil, c.f)
		if err != nil || string(got) != c.want {
			t.Errorf("AppendFloat(%v) = %q, %v; want %q", c.f, got, err, c.want)
		}
	}
	for _, f := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if _, err := AppendFloat(nil, f); !errors.Is(err, ErrNumberRange) {
			t.Errorf("AppendFloat(%v): want ErrNumberRange, got %v", f, err)
		}
	}
}

func TestCompareKeysMatchesUTF16(t *testing.T) {
	keys := []string{"", "a", "aa", "b", "A", "é", "\u00ff", "\u0100", "\ud7ff", "\ue000", "\uffff",
		"\U00010000", "\U0001F600", "\U0001F601", "\U0010FFFF", "a\U00010000", "a\ue000", "€", "😀a"}
	ref := func(a, b string) int {
		ua, ub := utf16.Encode([]rune(a)), utf16.Encode([]rune(b))
		return slices.Compare(ua, ub)
	}
	sign := func(x int) int { return min(max(x, -1), 1) }
	for _, a := range keys {
		for _, b := range keys {
			if got, want := sign(CompareKeys(a, b)), ref(a, b); got != want {
				t.Errorf("CompareKeys(%q, %q) = %d, want %d", a, b, got, want)
			}
		}
	}
}

type sample struct {
	Name    string            `json:"name"`
	Count   uint64            `json:"count"`
	Neg     int64             `json:"neg"`
	Ratio   float64           `json:"ratio"`
	Small   float32           `json:"small"`
	Tags    []string          `json:"tags,omitempty"`
	Labels  map[string]string `json:"labels"`
	Raw     json.RawMessage   `json:"raw"`
	Skipped string            `json:"-"`
}

func TestMarshal(t *testing.T) {
	v := map[string]any{
		"z":      uint64(math.MaxUint64),
		"a":      int64(math.MinInt64),
		"f":      0.5,
		"f32":    float32(0.1),
		"html":   "<&>",
		"nested": []any{nil, true, false, json.Number("1.0"), json.RawMessage(` {"b":1, "a":2} `)},
		"\ue000": 1,
		"😀":      2,
		"struct": sample{Name: "n", Count: 1 << 60, Neg: -3, Ratio: 1e21, Small: 0.25, Labels: map[string]string{"y": "1", "x": "2"}, Raw: json.RawMessage(`[3,2,1]`)},
	}
	got, err := Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"a":-9223372036854775808,"f":0.5,"f32":0.1,"html":"<&>","nested":[null,true,false,1,{"a":2,"b":1}],"struct":{"count":1152921504606846976,"labels":{"x":"2","y":"1"},"name":"n","neg":-3,"ratio":1e+21,"raw":[3,2,1],"small":0.25},"z":18446744073709551615,"😀":2,"\ue000":1}`
	want = strings.Replace(want, `\ue000`, "\ue000", 1)
	if string(got) != want {
		t.Fatalf("Marshal\n got %s\nwant %s", got, want)
	}
	// The struct path and the direct walk agree.
	direct, err := Marshal(map[string]any{"a": []string{"x", "y"}, "b": map[string]string{"k": "v"}})
	if err != nil || string(direct) != `{"a":["x","y"],"b":{"k":"v"}}` {
		t.Fatalf("direct walk: %s, %v", direct, err)
	}
}

func TestMarshalRejects(t *testing.T) {
	cases := map[string]any{
		"nan":         math.NaN(),
		"inf":         math.Inf(1),
		"chan":        make(chan int),
		"func":        func() {},
		"bad number":  json.Number("1.2.3"),
		"empty num":   json.Number(""),
		"bad raw":     json.RawMessage(`{"a":1,"a":2}`),
		"bad string":  "\xff",
		"bad key":     map[string]any{"\xff": 1},
		"nested nan":  []any{1, map[string]any{"x": math.NaN()}},
		"struct nan":  struct{ F float64 }{math.NaN()},
		"bad strings": []string{"ok", "\xfe"},
	}
	for name, v := range cases {
		if out, err := Marshal(v); err == nil {
			t.Errorf("%s: Marshal succeeded with %q", name, out)
		} else if !strings.HasPrefix(err.Error(), "marshal canonical json: ") {
			t.Errorf("%s: error %q lacks its verb prefix", name, err)
		}
	}
	deep := any(nil)
	for range MaxDepth + 2 {
		deep = []any{deep}
	}
	if _, err := Marshal(deep); !errors.Is(err, ErrTooDeep) {
		t.Errorf("deep value: want ErrTooDeep, got %v", err)
	}
}

func BenchmarkCanonicalize(b *testing.B) {
	in := []byte(`{"action":{"parameter_hash":"035350b0e6a021a4c924a149111944945e94d12f6d8a5e24e4461e7009ebf929","parameters":{"mode":"read","path":"/workspace/docs/roadmap.md"}},"boundary_class":"prevent","capability_id":"cap-bindings-001","decision":{"verdict":"allow"},"evidence":[{"details":"path allowed","guard_name":"ForbiddenPathGuard","verdict":true}],"metadata":{"surface":"bindings-vectors","version":1},"timestamp":1710000200}`)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	buf := make([]byte, 0, len(in))
	for b.Loop() {
		var err error
		if buf, err = Append(buf[:0], in); err != nil {
			b.Fatal(err)
		}
	}
}

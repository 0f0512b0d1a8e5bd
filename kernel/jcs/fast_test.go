package jcs

import (
	"bytes"
	"testing"
)

var isCanonicalCases = []struct {
	in   string
	want bool
}{
	{`{"conn":3,"host":"api.openai.com","port":443,"protocol":"tls"}`, true},
	{`{"workload":"agent-3"}`, true},
	{`{"a":[true,false,null,"x",{}],"b":{"c":[]},"d":-12,"e":0,"f":"\"\\\b\t\n\f\r\u0001\u001f\u00e9"}`, false}, // \u00e9 is not an escape canonical form writes
	{`{"f":"\"\\\b\t\n\f\r\u0001\u001f` + "\u007f\u2028é😀" + `"}`, true},
	{`[]`, true}, {`{}`, true}, {`""`, true}, {`0`, true}, {`-1`, true}, {`123456789012345678`, true},
	{`1234567890123456789`, false}, {`-0`, false}, {`01`, false}, {`1.5`, false}, {`1e3`, false},
	{` {}`, false}, {`{} `, false}, {`{"a":1 }`, false}, {`{"b":1,"a":2}`, false}, {`{"a":1,"a":2}`, false},
	{`{"é":1}`, false}, {`{"a\"":1}`, false}, {`"\u000a"`, false}, {`"\u000A"`, false}, {`"\/"`, false},
	{`"\u0041"`, false}, {"\"\xff\"", false}, {"\"\xed\xa0\x80\"", false}, {`[1,]`, false}, {`{"a":}`, false},
	{`tru`, false}, {`nul`, false}, {`"abc`, false}, {`[`, false}, {``, false},
}

func TestIsCanonical(t *testing.T) {
	for _, c := range isCanonicalCases {
		if got := isCanonical([]byte(c.in)); got != c.want {
			t.Errorf("isCanonical(%q) = %v, want %v", c.in, got, c.want)
		}
		if c.want {
			out, err := appendParsed(nil, []byte(c.in))
			if err != nil || !bytes.Equal(out, []byte(c.in)) {
				t.Errorf("%q: full canonicalizer gives %q, %v", c.in, out, err)
			}
		}
	}
	deep := bytes.Repeat([]byte("["), MaxDepth+1)
	deep = append(deep, bytes.Repeat([]byte("]"), MaxDepth+1)...)
	if isCanonical(deep) {
		t.Error("nesting past MaxDepth taken as canonical")
	}
	if _, err := Canonicalize(deep); err == nil {
		t.Error("nesting past MaxDepth accepted")
	}
}

// FuzzIsCanonical holds the shortcut to the full canonicalizer: whatever it
// takes as canonical must come back unchanged from parsing and rewriting.
func FuzzIsCanonical(f *testing.F) {
	for _, c := range isCanonicalCases {
		f.Add([]byte(c.in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if !isCanonical(in) {
			return
		}
		out, err := appendParsed(nil, in)
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("isCanonical(%q) but the full canonicalizer gives %q, %v", in, out, err)
		}
	})
}

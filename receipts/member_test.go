package receipts

import (
	"encoding/json"
	"testing"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// mapFirstString is how AppendReceipt read the indexed fields before
// indexedString: decode the object into a map, then firstString.
func mapFirstString(raw []byte, keys []string) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return ""
	}
	return firstString(m, keys...)
}

var memberCases = []string{
	``, `null`, `[]`, `"host"`, `{}`, ` { } `,
	`{"host":"a"}`, ` { "host" : "a" , "port":443 } `, `{"port":443,"host":"b"}`,
	`{"sni":"s","host":"h"}`, `{"sni":"s","server_name":"n"}`, `{"server_name":"n"}`,
	`{"host":null,"sni":"s"}`, `{"host":5,"sni":"s"}`, `{"host":{"name":"o"},"sni":"s"}`,
	`{"host":{"name":""},"sni":"s"}`, `{"host":{"NAME":"upper"}}`, `{"host":["x"],"sni":"s"}`,
	`{"host":"esc\"aped\\\u00e9"}`, `{"ho\u0073t":"escaped key"}`, `{"x":{"host":"nested"}}`,
	`{"a":"}{][,\"","host":"after tricky string"}`, `{"a":[{"b":"]"}],"host":"h"}`,
	`{"host":true}`, `{"host":-1.5e3,"sni":"s"}`, `{"host":""}`, `{"host":"\ud83d\ude00"}`,
	`{"workload":"w"}`, `{"workload_id":"i","workload_name":"n"}`, `{"workload":{"name":"pod","ns":"x"}}`,
}

func TestIndexedStringMatchesFirstString(t *testing.T) {
	for _, c := range memberCases {
		for _, keys := range [][]string{hostKeys, workloadKeys} {
			if got, want := indexedString([]byte(c), keys), mapFirstString([]byte(c), keys); got != want {
				t.Errorf("%s %v: got %q, want %q", c, keys, got, want)
			}
		}
	}
}

func FuzzIndexedString(f *testing.F) {
	for _, c := range memberCases {
		f.Add(c)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if _, err := jcs.Canonicalize([]byte(raw)); err != nil && raw != "" {
			return // AppendReceipt only sees what CanonicalJSON accepted
		}
		for _, keys := range [][]string{hostKeys, workloadKeys} {
			if got, want := indexedString([]byte(raw), keys), mapFirstString([]byte(raw), keys); got != want {
				t.Fatalf("%q %v: got %q, want %q", raw, keys, got, want)
			}
		}
	})
}

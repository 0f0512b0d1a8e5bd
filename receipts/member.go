package receipts

import (
	"bytes"
	"encoding/json"
)

// indexedString is firstString over the members of the JSON object raw,
// without decoding the object into a map: AppendReceipt runs it twice per
// receipt. raw must be JSON that kernel.Receipt.CanonicalJSON accepted
// (valid, UTF-8, no duplicate keys); anything that is not an object, null
// included, yields "", as json.Unmarshal into a map followed by
// firstString does. TestIndexedStringMatchesFirstString holds it to that.
func indexedString(raw []byte, keys []string) string {
	var vals [4][]byte // more keys than this are never asked for
	if len(keys) > len(vals) {
		panic("indexedString: too many keys")
	}
	found := false
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return ""
	}
	i = skipSpace(raw, i+1)
	for i < len(raw) && raw[i] == '"' {
		end := skipValue(raw, i)
		key := raw[i+1 : end-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var k string
			if json.Unmarshal(raw[i:end], &k) != nil {
				return ""
			}
			key = []byte(k)
		}
		i = skipSpace(raw, end)
		if i >= len(raw) || raw[i] != ':' {
			return ""
		}
		i = skipSpace(raw, i+1)
		end = skipValue(raw, i)
		for j, k := range keys {
			if string(key) == k {
				vals[j], found = raw[i:end], true
			}
		}
		i = skipSpace(raw, end)
		if i < len(raw) && raw[i] == ',' {
			i = skipSpace(raw, i+1)
		}
	}
	if !found {
		return ""
	}
	for _, v := range vals[:len(keys)] {
		if v == nil {
			continue
		}
		if len(v) >= 2 && v[0] == '"' && bytes.IndexByte(v, '\\') < 0 {
			return string(v[1 : len(v)-1])
		}
		if s, ok := stringOrName(v); ok {
			return s
		}
	}
	return ""
}

// stringOrName is firstString's reading of one member: a JSON string (or
// null, which reads as ""), else an object's non-empty "name".
func stringOrName(raw []byte) (string, bool) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var obj struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(raw, &obj) == nil && obj.Name != "" {
		return obj.Name, true
	}
	return "", false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the JSON value starting at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		for i++; i < len(b); i++ {
			switch b[i] {
			case '\\':
				i++
			case '"':
				return i + 1
			}
		}
		return len(b)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipValue(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(b)
	}
	for ; i < len(b); i++ {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i
		}
	}
	return i
}

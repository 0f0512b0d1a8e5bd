package jcs

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Marshal returns the canonical JSON encoding of v.
//
// The common dynamic shapes (nil, bool, string, json.Number,
// json.RawMessage, the integer and float kinds, map[string]any,
// map[string]string, []any, []string) are walked directly, with integers
// written exactly. Any other value, structs included, is encoded with
// encoding/json (so its tags and Marshaler methods apply) and the result
// canonicalized; integers still survive exactly, since canonicalization
// never reads an integer literal through float64.
func Marshal(v any) ([]byte, error) {
	out, err := AppendMarshal(nil, v)
	if err != nil {
		return nil, fmt.Errorf("marshal canonical json: %w", err)
	}
	return out, nil
}

// AppendMarshal is Marshal appending to dst.
func AppendMarshal(dst []byte, v any) ([]byte, error) {
	return appendValue(dst, v, 0)
}

func appendValue(dst []byte, v any, depth int) ([]byte, error) {
	if depth > MaxDepth {
		return dst, ErrTooDeep
	}
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...), nil
	case bool:
		if x {
			return append(dst, "true"...), nil
		}
		return append(dst, "false"...), nil
	case string:
		return appendCheckedString(dst, x)
	case json.Number:
		return appendNumberText(dst, string(x))
	case json.RawMessage:
		if x == nil {
			return append(dst, "null"...), nil // as encoding/json does
		}
		return appendText(dst, x)
	case int:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int8:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int16:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int32:
		return strconv.AppendInt(dst, int64(x), 10), nil
	case int64:
		return strconv.AppendInt(dst, x, 10), nil
	case uint:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint8:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint16:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint32:
		return strconv.AppendUint(dst, uint64(x), 10), nil
	case uint64:
		return strconv.AppendUint(dst, x, 10), nil
	case float64:
		out, err := AppendFloat(dst, x)
		if err != nil {
			return dst, fmt.Errorf("%w: float %v", ErrUnsupportedType, x)
		}
		return out, nil
	case float32:
		// Take the float32's own shortest decimal (what encoding/json
		// writes), not the float64 widening: 0.1f stays 0.1.
		return appendNumberText(dst, strconv.FormatFloat(float64(x), 'g', -1, 32))
	case []any:
		return appendArray(dst, x, depth+1, appendValue)
	case []string:
		return appendArray(dst, x, depth+1, appendStringElem)
	case map[string]any:
		return appendObject(dst, x, depth+1, appendValue)
	case map[string]string:
		return appendObject(dst, x, depth+1, appendStringElem)
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return dst, fmt.Errorf("%w: %v", ErrUnsupportedType, err)
	}
	return appendText(dst, raw)
}

// appendCheckedString writes s as a JSON string, refusing invalid UTF-8.
func appendCheckedString(dst []byte, s string) ([]byte, error) {
	if !utf8.ValidString(s) {
		return dst, fmt.Errorf("%w: string %q", ErrInvalidUTF8, s)
	}
	return AppendString(dst, s), nil
}

// appendStringElem is appendCheckedString as an element writer (a string
// nests nothing, so depth does not matter).
func appendStringElem(dst []byte, s string, _ int) ([]byte, error) {
	return appendCheckedString(dst, s)
}

// appendArray writes xs as a JSON array, each element by elem at depth: the
// one walk for every slice shape Marshal takes directly.
func appendArray[E any](dst []byte, xs []E, depth int, elem func([]byte, E, int) ([]byte, error)) ([]byte, error) {
	dst = append(dst, '[')
	for i, e := range xs {
		if i > 0 {
			dst = append(dst, ',')
		}
		var err error
		if dst, err = elem(dst, e, depth); err != nil {
			return dst, err
		}
	}
	return append(dst, ']'), nil
}

// appendObject writes m as a JSON object, members in canonical key order,
// each value by elem at depth: the one walk for every map shape Marshal
// takes directly.
func appendObject[V any](dst []byte, m map[string]V, depth int, elem func([]byte, V, int) ([]byte, error)) ([]byte, error) {
	keys, err := sortedKeys(m)
	if err != nil {
		return dst, err
	}
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = AppendString(dst, k)
		dst = append(dst, ':')
		if dst, err = elem(dst, m[k], depth); err != nil {
			return dst, err
		}
	}
	return append(dst, '}'), nil
}

func sortedKeys[V any](m map[string]V) ([]string, error) {
	keys := make([]string, 0, len(m))
	for k := range m {
		if !utf8.ValidString(k) {
			return nil, fmt.Errorf("%w: object key %q", ErrInvalidUTF8, k)
		}
		keys = append(keys, k)
	}
	slices.SortFunc(keys, CompareKeys)
	return keys, nil
}

// appendNumberText canonicalizes a number given as text (json.Number),
// which must be exactly one RFC 8259 number.
func appendNumberText(dst []byte, s string) ([]byte, error) {
	p := parser{data: []byte(s)}
	if s == "" || (s[0] != '-' && (s[0] < '0' || s[0] > '9')) {
		return dst, &SyntaxError{Msg: fmt.Sprintf("number %q", s), Err: ErrSyntax}
	}
	out, err := p.number()
	if err != nil {
		return dst, err
	}
	if p.pos != len(s) {
		return dst, &SyntaxError{Offset: p.pos, Msg: fmt.Sprintf("number %q", s), Err: ErrSyntax}
	}
	return append(dst, out...), nil
}

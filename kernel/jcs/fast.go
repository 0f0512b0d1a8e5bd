package jcs

import "unicode/utf8"

// isCanonical reports whether data is already the canonical form of the
// JSON text it holds, so Append can copy it instead of parsing it into a
// tree and writing it back. It is deliberately narrow: it answers false for
// anything it does not check cheaply (non-ASCII or escaped object keys,
// numbers with a fraction or an exponent, integers of 19 digits or more,
// nesting past MaxDepth), and Append then takes the full path, which gives
// the same bytes or the error. Receipt parameters and metadata, written by
// encoding/json or by Sign, are usually canonical already.
//
// False positives would change behaviour; FuzzIsCanonical holds every true
// answer to the full canonicalizer's output.
func isCanonical(data []byte) bool {
	end, ok := scanCanonical(data, 0, 0)
	return ok && end == len(data)
}

// scanCanonical checks the canonical value at data[i:] and returns where it
// ends.
func scanCanonical(data []byte, i, depth int) (int, bool) {
	if i >= len(data) {
		return i, false
	}
	switch c := data[i]; {
	case c == '"':
		return scanCanonicalString(data, i)
	case c == '-' || (c >= '0' && c <= '9'):
		return scanCanonicalInt(data, i)
	case c == 't':
		return scanWord(data, i, "true")
	case c == 'f':
		return scanWord(data, i, "false")
	case c == 'n':
		return scanWord(data, i, "null")
	case c == '[':
		if depth+1 > MaxDepth {
			return i, false
		}
		i++
		if i < len(data) && data[i] == ']' {
			return i + 1, true
		}
		for {
			var ok bool
			if i, ok = scanCanonical(data, i, depth+1); !ok || i >= len(data) {
				return i, false
			}
			switch data[i] {
			case ',':
				i++
			case ']':
				return i + 1, true
			default:
				return i, false
			}
		}
	case c == '{':
		if depth+1 > MaxDepth {
			return i, false
		}
		i++
		if i < len(data) && data[i] == '}' {
			return i + 1, true
		}
		var prev []byte
		for {
			if i >= len(data) || data[i] != '"' {
				return i, false
			}
			// Keys: plain ASCII only, so byte order is UTF-16 order and
			// the raw bytes are the key.
			start := i + 1
			j := start
			for j < len(data) && data[j] != '"' {
				if b := data[j]; b < 0x20 || b == '\\' || b >= utf8.RuneSelf {
					return j, false
				}
				j++
			}
			if j >= len(data) {
				return j, false
			}
			key := data[start:j]
			if prev != nil && string(prev) >= string(key) { // sorted, no duplicates
				return j, false
			}
			prev = key
			i = j + 1
			if i >= len(data) || data[i] != ':' {
				return i, false
			}
			var ok bool
			if i, ok = scanCanonical(data, i+1, depth+1); !ok || i >= len(data) {
				return i, false
			}
			switch data[i] {
			case ',':
				i++
			case '}':
				return i + 1, true
			default:
				return i, false
			}
		}
	}
	return i, false
}

func scanWord(data []byte, i int, word string) (int, bool) {
	if len(data)-i < len(word) || string(data[i:i+len(word)]) != word {
		return i, false
	}
	return i + len(word), true
}

// scanCanonicalInt accepts an integer written as AppendInt/AppendUint write
// it: no leading zeros, no "-0", and short enough to fit either way.
func scanCanonicalInt(data []byte, i int) (int, bool) {
	start := i
	if data[i] == '-' {
		i++
	}
	digits := i
	for i < len(data) && data[i] >= '0' && data[i] <= '9' {
		i++
	}
	n := i - digits
	switch {
	case n == 0 || n > 18:
		return i, false
	case data[digits] == '0' && (n > 1 || digits > start): // leading zero, or -0
		return i, false
	case i < len(data) && (data[i] == '.' || data[i] == 'e' || data[i] == 'E'):
		return i, false
	}
	return i, true
}

// scanCanonicalString accepts a string literal exactly as AppendString
// writes it: valid UTF-8, '"' and '\\' escaped, control characters as \b
// \t \n \f \r or \u00xx (lowercase), nothing else escaped.
func scanCanonicalString(data []byte, i int) (int, bool) {
	i++
	start := i
	for i < len(data) {
		c := data[i]
		switch {
		case c == '"':
			return i + 1, utf8.Valid(data[start:i])
		case c < 0x20:
			return i, false
		case c == '\\':
			if i+1 >= len(data) {
				return i, false
			}
			switch data[i+1] {
			case '"', '\\', 'b', 't', 'n', 'f', 'r':
				i += 2
			case 'u':
				if i+5 >= len(data) || data[i+2] != '0' || data[i+3] != '0' {
					return i, false
				}
				hi, lo := data[i+4], data[i+5]
				if hi != '0' && hi != '1' || !(lo >= '0' && lo <= '9' || lo >= 'a' && lo <= 'f') {
					return i, false
				}
				switch v := (hi-'0')<<4 | unhexLower(lo); v {
				case '\b', '\t', '\n', '\f', '\r':
					return i, false // has a short form
				}
				i += 6
			default:
				return i, false
			}
		default:
			i++
		}
	}
	return i, false
}

func unhexLower(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'a' + 10
}

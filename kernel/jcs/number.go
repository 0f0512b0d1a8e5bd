package jcs

import (
	"math"
	"strconv"
)

// appendNumberLiteral appends the canonical form of a number literal that
// already matched the RFC 8259 grammar. integer reports that it has no
// fraction and no exponent.
func appendNumberLiteral(dst, lit []byte, integer bool) ([]byte, error) {
	if integer {
		// Chio prints integers that fit in i64 or u64 exactly: going through
		// float64 would turn 2^53+1 into 2^53 and u64::MAX into 1.8e19.
		if lit[0] == '-' {
			if v, err := strconv.ParseInt(string(lit), 10, 64); err == nil {
				return strconv.AppendInt(dst, v, 10), nil // "-0" parses as 0
			}
		} else if v, err := strconv.ParseUint(string(lit), 10, 64); err == nil {
			return strconv.AppendUint(dst, v, 10), nil
		}
	}
	f, err := strconv.ParseFloat(string(lit), 64)
	if err != nil || math.IsInf(f, 0) {
		// ParseFloat only fails on range here: the grammar was checked.
		return dst, ErrNumberRange
	}
	return AppendFloat(dst, f)
}

// AppendFloat appends f in the ECMAScript Number.prototype.toString form
// RFC 8785 requires: the shortest digits that round-trip, in plain notation
// for exponents in [-6, 21) and in d.ddde±x notation otherwise. NaN and
// infinities have no JSON form and are refused.
func AppendFloat(dst []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return dst, ErrNumberRange
	}
	if f == 0 {
		return append(dst, '0'), nil // both zeros, as ECMAScript prints them
	}
	if f < 0 {
		dst = append(dst, '-')
		f = -f
	}
	// 'e' with precision -1 yields the shortest round-trip digits as
	// d.ddddde±xx; re-lay them out by the ECMAScript rules.
	var scratch [32]byte
	b := strconv.AppendFloat(scratch[:0], f, 'e', -1, 64)
	epos := 0
	for b[epos] != 'e' {
		epos++
	}
	var digits [24]byte
	k := 0
	for _, c := range b[:epos] {
		if c != '.' {
			digits[k] = c
			k++
		}
	}
	exp, _ := strconv.Atoi(string(b[epos+1:]))
	n := exp + 1 // value = 0.d1d2...dk × 10^n
	ds := digits[:k]
	switch {
	case k <= n && n <= 21:
		dst = append(dst, ds...)
		for i := 0; i < n-k; i++ {
			dst = append(dst, '0')
		}
	case 0 < n && n <= 21:
		dst = append(dst, ds[:n]...)
		dst = append(dst, '.')
		dst = append(dst, ds[n:]...)
	case -6 < n && n <= 0:
		dst = append(dst, '0', '.')
		for i := 0; i < -n; i++ {
			dst = append(dst, '0')
		}
		dst = append(dst, ds...)
	default:
		dst = append(dst, ds[0])
		if k > 1 {
			dst = append(dst, '.')
			dst = append(dst, ds[1:]...)
		}
		dst = append(dst, 'e')
		if n-1 >= 0 {
			dst = append(dst, '+')
		}
		dst = strconv.AppendInt(dst, int64(n-1), 10)
	}
	return dst, nil
}

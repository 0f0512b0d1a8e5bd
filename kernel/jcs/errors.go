package jcs

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package wraps one of them
// (inside a *SyntaxError when the input text is at fault), so callers can
// tell the cause apart with errors.Is.
var (
	// ErrSyntax: the input is not RFC 8259 JSON text.
	ErrSyntax = errors.New("invalid json")
	// ErrDuplicateKey: an object names the same member twice (after
	// unescaping). RFC 8785 leaves this to I-JSON, which forbids it.
	ErrDuplicateKey = errors.New("duplicate object key")
	// ErrInvalidUTF8: a string holds bytes that are not UTF-8, or a \u
	// escape names a lone surrogate.
	ErrInvalidUTF8 = errors.New("invalid utf-8 or lone surrogate")
	// ErrNumberRange: a number is not finite as an IEEE-754 double.
	ErrNumberRange = errors.New("number out of range")
	// ErrTooDeep: nesting exceeds MaxDepth.
	ErrTooDeep = errors.New("nesting too deep")
	// ErrUnsupportedType: Marshal was given a value JSON cannot represent
	// (a channel, a func, a NaN, a map with non-string keys...).
	ErrUnsupportedType = errors.New("unsupported value")
)

// SyntaxError reports where in the input a problem was found.
type SyntaxError struct {
	// Offset is the byte offset into the input where the problem starts.
	Offset int
	// Msg describes the problem in words.
	Msg string
	// Err is one of the sentinel errors above.
	Err error
}

func (e *SyntaxError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("%v at offset %d", e.Err, e.Offset)
	}
	return fmt.Sprintf("%v at offset %d: %s", e.Err, e.Offset, e.Msg)
}

func (e *SyntaxError) Unwrap() error { return e.Err }

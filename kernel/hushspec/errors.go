package hushspec

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every error this package returns wraps one of them, so
// callers branch with errors.Is and never on message text.
var (
	// ErrInvalidPolicy wraps every way a policy document can fail to load:
	// syntax, schema, limits and extends resolution. A caller that only needs
	// "is this policy usable" tests for this one.
	ErrInvalidPolicy = errors.New("invalid policy")

	// ErrSyntax is malformed YAML, or YAML this package refuses to read
	// (aliases, several documents in one file, custom tags).
	ErrSyntax = errors.New("yaml syntax")
	// ErrUnknownField is a key the specification does not define (core 2.1).
	ErrUnknownField = errors.New("unknown field")
	// ErrMissingField is an absent required field.
	ErrMissingField = errors.New("missing required field")
	// ErrType is a value of the wrong YAML type, e.g. a string where a
	// boolean is due (core 7.3, 7.8).
	ErrType = errors.New("wrong type")
	// ErrEnum is a value outside an enumeration (core 7.4).
	ErrEnum = errors.New("value not allowed")
	// ErrDuplicate is a repeated mapping key or secret-pattern name (core 7.5).
	ErrDuplicate = errors.New("duplicate")
	// ErrRegex is a regular expression that does not compile (core 7.6).
	ErrRegex = errors.New("invalid regular expression")
	// ErrNumber is a number outside its range (core 7.7).
	ErrNumber = errors.New("number out of range")
	// ErrPattern is a path glob or host pattern this engine cannot compile.
	ErrPattern = errors.New("invalid pattern")
	// ErrVersion is a hushspec version this engine does not support.
	ErrVersion = errors.New("unsupported hushspec version")
	// ErrLimit is input beyond the bounds that keep loading safe on hostile
	// documents: size, nesting, list length, pattern length or count.
	ErrLimit = errors.New("limit exceeded")

	// ErrExtendsCycle is an extends chain that returns to a policy already in
	// it (core 2.3).
	ErrExtendsCycle = errors.New("extends cycle")
	// ErrExtendsUnresolved is an extends reference that cannot be loaded.
	ErrExtendsUnresolved = errors.New("cannot resolve extends")

	// ErrInvalidHost is an egress target or host pattern that cannot be
	// normalized to a host name or IP address.
	ErrInvalidHost = errors.New("invalid host")
)

// FieldError is one problem found in a policy document, located by its dotted
// field path and its 1-based line and column in the YAML source (0 when the
// problem has no single location, e.g. a file that is too large).
type FieldError struct {
	File   string // file name the document came from, if known
	Path   string // dotted field path, e.g. rules.egress.allow[2]
	Line   int
	Column int
	Err    error  // one of the sentinel errors above
	Detail string // what exactly is wrong
}

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(":")
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "%d:%d:", e.Line, e.Column)
	}
	if b.Len() > 0 {
		b.WriteString(" ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Err.Error())
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	return b.String()
}

// Unwrap lets errors.Is see both the specific sentinel and ErrInvalidPolicy.
func (e *FieldError) Unwrap() []error { return []error{e.Err, ErrInvalidPolicy} }

// ValidationError collects every FieldError of one document, so that a user
// fixing a policy sees all problems at once rather than one per run.
type ValidationError struct {
	Errors []*FieldError
}

func (e *ValidationError) Error() string {
	if len(e.Errors) == 1 {
		return e.Errors[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d problems:", len(e.Errors))
	for _, fe := range e.Errors {
		b.WriteString("\n  ")
		b.WriteString(fe.Error())
	}
	return b.String()
}

// Unwrap exposes every field error to errors.Is and errors.As.
func (e *ValidationError) Unwrap() []error {
	out := make([]error, len(e.Errors))
	for i, fe := range e.Errors {
		out[i] = fe
	}
	return out
}

// FieldErrors returns the individual problems inside err (a *ValidationError
// or a single *FieldError anywhere in its chain), or nil.
func FieldErrors(err error) []*FieldError {
	var ve *ValidationError
	if errors.As(err, &ve) {
		return ve.Errors
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return []*FieldError{fe}
	}
	return nil
}

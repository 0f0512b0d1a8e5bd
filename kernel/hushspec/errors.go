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
	// ErrVersion is a hushspec value that is not a MAJOR.MINOR.PATCH string
	// of a minor this engine supports (0.1, 0.2, 1.0).
	ErrVersion = errors.New("unsupported hushspec version")
	// ErrConstraint is a structural constraint of core 7 violated by a value
	// of the right type: a malformed `when` condition, an empty name in a 1.x
	// document, a control mapping without rule paths.
	ErrConstraint = errors.New("constraint violation")
	// ErrDate is a metadata date that is not an ISO 8601 calendar date
	// (YYYY-MM-DD naming a day that exists).
	ErrDate = errors.New("invalid governance date")
	// ErrLimit is input beyond the bounds that keep loading safe on hostile
	// documents: size, nesting, list length, pattern length or count.
	ErrLimit = errors.New("limit exceeded")

	// ErrExtendsCycle is an extends chain that returns to a policy already in
	// it (core 2.3).
	ErrExtendsCycle = errors.New("extends cycle")
	// ErrExtendsUnresolved is an extends reference that cannot be loaded.
	ErrExtendsUnresolved = errors.New("cannot resolve extends")
	// ErrDigestMismatch is an extends reference whose #sha256: pin names
	// another content hash than the referenced document's.
	ErrDigestMismatch = errors.New("digest_mismatch")
	// ErrInvalidPin is an extends reference whose fragment is not exactly
	// #sha256: followed by 64 lowercase hex digits.
	ErrInvalidPin = errors.New("invalid_pin")

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
	// Code is the HushSpec error code (spec/registries/error-codes.yaml)
	// when it is not the one Err implies (see ErrorCode).
	Code string
}

// Registered HushSpec error codes (spec/registries/error-codes.yaml).
const (
	CodeIO         = "E000" // input could not be read
	CodeParse      = "E001" // YAML parse error, profile, unknown field, type, enum
	CodeVersion    = "E002" // unsupported hushspec version
	CodeDuplicate  = "E003" // duplicate secret pattern name
	CodeConstraint = "E004" // constraint violation
	CodeRegex      = "E005" // regex outside the profile
	CodeExtends    = "E010" // extends resolution failed
	CodeDate       = "E011" // invalid governance date
)

// ErrorCode returns the registered HushSpec error code err carries: the
// first FieldError's, or the one its sentinel implies; "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	if fes := FieldErrors(err); len(fes) > 0 {
		return fes[0].code()
	}
	switch {
	case errors.Is(err, ErrExtendsCycle), errors.Is(err, ErrExtendsUnresolved),
		errors.Is(err, ErrDigestMismatch), errors.Is(err, ErrInvalidPin):
		return CodeExtends
	case errors.Is(err, ErrInvalidPolicy):
		return CodeParse
	}
	return CodeIO
}

func (e *FieldError) code() string {
	if e.Code != "" {
		return e.Code
	}
	switch {
	case errors.Is(e.Err, ErrVersion):
		return CodeVersion
	case errors.Is(e.Err, ErrConstraint), errors.Is(e.Err, ErrNumber), errors.Is(e.Err, ErrPattern):
		return CodeConstraint
	case errors.Is(e.Err, ErrRegex):
		return CodeRegex
	case errors.Is(e.Err, ErrDate):
		return CodeDate
	case errors.Is(e.Err, ErrExtendsCycle), errors.Is(e.Err, ErrExtendsUnresolved),
		errors.Is(e.Err, ErrDigestMismatch), errors.Is(e.Err, ErrInvalidPin):
		return CodeExtends
	}
	return CodeParse
}

// Error reads "file:line:col: path: detail [code]": the detail names the
// problem in full, the code is the registered one.
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
	if e.Detail != "" {
		b.WriteString(e.Detail)
	} else {
		b.WriteString(e.Err.Error())
	}
	b.WriteString(" [")
	b.WriteString(e.code())
	b.WriteString("]")
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

package dnsproxy

import "errors"

// Sentinel errors of package dnsproxy.
var (
	// ErrNotQuery: a message is not a well-formed single-question DNS
	// query (unparseable, a response, no or several questions, records in
	// its answer or authority sections, an opcode other than QUERY).
	ErrNotQuery = errors.New("not a dns query")
	// ErrNoUpstream: no upstream answered an allowed query.
	ErrNoUpstream = errors.New("no upstream answered")
	// ErrInvalidOptions: New was given options it cannot work with.
	ErrInvalidOptions = errors.New("invalid dns proxy options")
)

package sidecar

import "errors"

// Sentinel errors of package sidecar. Returned errors wrap one of these with
// the detail, so callers branch with errors.Is and people read the message.
var (
	// ErrInvalidSpec: the OpenAPI document cannot be routed on (not 3.x, a
	// missing or duplicate operationId, ambiguous or malformed templates).
	ErrInvalidSpec = errors.New("invalid openapi spec")
	// ErrMalformedPath: a request path the sidecar refuses to interpret,
	// because an upstream could read it as another path (dot segments,
	// encoded slashes, bad escapes, invalid UTF-8).
	ErrMalformedPath = errors.New("malformed request path")
	// ErrStartup: the sidecar cannot start as configured (a listener that
	// cannot be opened, an endpoint path that collides with the API).
	ErrStartup = errors.New("sidecar cannot start")
)

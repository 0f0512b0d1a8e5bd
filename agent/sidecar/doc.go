// Package sidecar is `chio-agent api protect`: a reverse proxy in front of
// an HTTP API that puts every request under the kernel.
//
// Each request is matched to an operation of the API's OpenAPI 3.x spec
// (openapi.go: literal segments win over templates, and malformed or
// ambiguous paths are refused rather than guessed at). The operationId is
// the tool name the HushSpec tool_access rules decide on; the receipt's
// tool_server is the upstream's origin (or sidecar.tool_server), and its
// parameters are the method, the route pattern, the path parameters and a
// random request id, never the query string or the body. When trusted
// capability issuers are configured, the request must also carry an
// X-Chio-Capability token granting invoke of that tool on that server.
//
// Every decision gets a signed receipt in the receipt log before the
// request is forwarded or refused, and every response to a protected
// request names it in X-Chio-Receipt-Id; a receipt that cannot be written
// refuses the request with 503 (fail closed). Requests outside the spec
// are refused unless the policy lists chio_unmatched_route in
// tool_access.allow.
//
// The sidecar's own endpoints live under /chio/ (never forwarded): health
// (readiness: a policy is loaded and the receipt log can write), live,
// evaluate, verify, and an admin surface (status, policy reload) that is
// closed unless CHIO_SIDECAR_CONTROL_TOKEN is set.
//
// Use Run for a daemon (the command line does), or Start for a Server whose
// address and receipt log a caller needs (tests, benchmarks). docs/sidecar.md
// has the endpoints, the environment contract and the deployment manifests.
package sidecar

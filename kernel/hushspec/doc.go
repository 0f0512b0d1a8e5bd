// Package hushspec loads HushSpec 0.1.0 policies and decides actions against
// them. It is the policy half of the Chio kernel: the kernel facade calls
// Evaluate for each action and puts the Result, and Policy.Hash, into the
// receipt it signs.
//
// Loading is fail-closed (HushSpec core 2.1 and 7): unknown fields at any
// level, wrong YAML types, bad enum values, invalid regular expressions and
// out-of-range numbers are all rejected, every problem reported at once as a
// *ValidationError whose FieldErrors name the field path and the line.
// Hostile input is bounded: documents over MaxDocumentBytes, YAML aliases,
// nesting deeper than 64 levels, over-long or too many regular expressions
// are refused, never truncated.
//
// Use:
//
//	p, err := hushspec.LoadFile("policy.yaml") // resolves extends
//	r := p.Evaluate(hushspec.Action{Type: "egress", Target: "api.example.com:443"})
//	// r.Decision is "allow", "warn" or "deny"; r.MatchedRule e.g. "rules.egress.allow"
//
// A Policy is compiled once: egress patterns into a map of exact names, a map
// of IP addresses and a trie of wildcard patterns keyed by labels from the
// right; globs and regexes into RE2 programs. Evaluate compiles nothing, is
// safe for concurrent use, and for an already-normalized host allocates
// nothing. Egress targets and patterns are normalized alike (NormalizeHost):
// URL to host, userinfo and port removed, trailing dot removed, full Unicode
// lowercase per label, IDNA A-labels; IP literals compared as addresses.
//
// Where the HushSpec reference SDKs differ from the specification text, this
// package follows the text; docs/policy.md lists those places, the few where
// the conformance fixtures override the text, and what is not evaluated (the
// posture, origins and detection extensions are accepted but not applied).
package hushspec

// Package hushspec loads HushSpec policies (documents declaring 0.1.Z, 0.2.Z
// or 1.0.Z, all read with the 1.0 semantics) and decides actions against
// them. It is the policy half of the Chio kernel: the kernel facade calls
// Evaluate for each action and puts the Result, and Policy.Hash, into the
// receipt it signs. It conforms to HushSpec 1.0 core Levels 1-3 against the
// corpus vendored in testdata/conformance/hushspec-1.0 (docs/policy.md).
//
// Loading is fail-closed (HushSpec core 2.4 and 7): the YAML profile
// (yamlprofile.go), unknown fields at any level, wrong types, bad enum
// values, regular expressions outside the profile (regex.go), malformed
// `when` conditions and out-of-range numbers are all rejected, every problem
// reported at once as a *ValidationError whose FieldErrors name the field
// path, the line and the registered error code (ErrorCode). Hostile input is
// bounded: documents over MaxDocumentBytes, anchors and aliases, nesting
// deeper than 32 levels, more than 100,000 nodes, over-long or too many
// regular expressions are refused, never truncated.
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
// What lives where: parse.go and schema.go validate a document, resolve.go
// follows extends and merges, policy.go compiles, evaluate.go decides,
// conditions.go and posture.go gate blocks, glob.go, host.go and hostmatch.go
// normalize and match targets. docs/policy.md lists what is not evaluated
// (origins, detection, posture budgets) and where this engine reads the
// specification in a documented way of its own.
package hushspec

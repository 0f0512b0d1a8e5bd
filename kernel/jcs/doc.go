// Package jcs implements RFC 8785 JSON Canonicalization (JCS) as Chio uses it:
// the byte form that every Chio hash and signature is computed over.
//
// Canonical form: no insignificant whitespace; object members sorted by the
// UTF-16 code units of their keys; strings with minimal escaping (only '"',
// '\\' and C0 controls, the latter as \b \t \n \f \r or lowercase \u00xx;
// U+007F..U+009F and everything else written as raw UTF-8); numbers in
// ECMAScript shortest round-trip form, except that integer literals that fit
// in int64 or uint64 are written exactly instead of going through float64
// (Chio's rule; it keeps 2^53+1 and u64::MAX intact).
//
// Input is strict RFC 8259 JSON: duplicate keys (compared after unescaping),
// invalid UTF-8, lone surrogate escapes, non-finite numbers, trailing data and
// nesting deeper than MaxDepth are all rejected, since a canonicalizer that
// guesses lets two parties sign different meanings of the same bytes.
package jcs

// Package sniff reads the first bytes of a redirected connection and says
// what they claim: a TLS ClientHello (SNI, ALPN, ECH, versions), an HTTP/1.x
// request head (Host, method, path), the HTTP/2 preface, or opaque bytes.
//
// A matcher may only peek: Sniff owns no sockets beyond the read deadline it
// sets and clears, makes no decision and hands back every byte it read
// (Sniffed.Prefix) for the relay to replay. It depends on the standard
// library and golang.org/x/crypto/cryptobyte only, and is fuzzed
// (FuzzSniff) against crypto/tls and net/http.
//
// What lives where:
//
//   - sniff.go: Sniff, the result and its invariants, classification, and
//     the helpers both parsers share.
//   - tls.go: the ClientHello parser (record reassembly, extensions).
//   - http.go: the HTTP/1.x request line and head parser.
package sniff

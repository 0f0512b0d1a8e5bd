package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// Protocol is what the first bytes of a redirected connection claim to be.
type Protocol string

const (
	// ProtocolTLS: the first byte is a TLS handshake record (0x16).
	ProtocolTLS Protocol = "tls"
	// ProtocolHTTP: the first bytes are a known HTTP/1.x method and a space.
	ProtocolHTTP Protocol = "http"
	// ProtocolH2C: the HTTP/2 prior-knowledge preface ("PRI * HTTP/2.0…").
	ProtocolH2C Protocol = "h2c"
	// ProtocolOpaque: bytes arrived but match none of the above; only the
	// original IP and port are known.
	ProtocolOpaque Protocol = "opaque"
	// ProtocolNone: not a single byte arrived.
	ProtocolNone Protocol = "none"
)

// StopReason says why Sniff stopped reading.
type StopReason string

const (
	// StopComplete: the first message was read whole and parsed: a
	// ClientHello, an HTTP/1.x request head, the HTTP/2 preface, or, for
	// opaque bytes, the first read (nothing more can be learnt from them).
	StopComplete StopReason = "complete"
	// StopMalformed: the bytes claim a protocol but break its grammar;
	// Sniffed.Malformed says how. Reading stopped as soon as that was clear.
	StopMalformed StopReason = "malformed"
	// StopTimeout: the deadline passed before the message was complete (with
	// Protocol none: the client sent nothing at all).
	StopTimeout StopReason = "timeout"
	// StopEOF: the client closed its side before the message was complete
	// (with Protocol none: before sending anything).
	StopEOF StopReason = "eof"
	// StopLimit: the message does not fit in SniffOptions.MaxBytes, either
	// because that many bytes were read or because a length field already
	// announced more.
	StopLimit StopReason = "limit"
	// StopError: a read failed for another reason; Sniff returns the error.
	StopError StopReason = "error"
)

// Sniffed is what the first bytes of a connection told.
//
// Invariants the proxy may rely on:
//   - Prefix holds every byte read from the client, in order, and nothing
//     else; the proxy must write it upstream before relaying the rest.
//   - Protocol is ProtocolNone exactly when Prefix is empty.
//   - Malformed is non-empty exactly when Stop is StopMalformed.
//   - The name fields (SNI, ALPN, ECH, TLS versions, Host, HostPort, Method,
//     Path, HTTPVersion) are set only when Stop is StopComplete, so a policy
//     never acts on a half-read or half-parsed name.
type Sniffed struct {
	Protocol Protocol
	// Stop says why reading ended; see the Stop* constants.
	Stop StopReason

	// SNI is the ClientHello's host_name, lowercased ASCII, no trailing dot.
	// Empty when the client sent none.
	SNI string
	// ALPN lists the offered application protocols in the client's order.
	ALPN []string
	// ECH is set when the ClientHello carries an encrypted_client_hello
	// extension: the real name is encrypted and SNI is only the outer
	// (public) name. GREASE ECH looks the same on the wire by design, so this
	// means "ECH offered or faked", never "ECH certainly in use".
	ECH bool
	// TLSVersion is the ClientHello's legacy_version (0x0303 for TLS 1.2
	// and 1.3 clients alike).
	TLSVersion uint16
	// TLSMaxVersion is the highest version offered: the largest non-GREASE
	// entry of supported_versions, or TLSVersion when that extension is
	// absent.
	TLSMaxVersion uint16

	// Host is the HTTP/1.x authority host without port, as sent (case kept):
	// from the request target when it is in absolute or authority form
	// (RFC 9112 §3.2.2 makes it win over the Host header), otherwise from the
	// Host header. IPv6 literals come without brackets ("::1"). Empty for an
	// HTTP/1.0 request without Host.
	Host string
	// HostPort is the port that followed Host, if any, as sent.
	HostPort string
	// Method is the HTTP request method.
	Method string
	// Path is the request target as sent: "/p?q", "http://h/p", "h:443", "*".
	Path string
	// HTTPVersion is "HTTP/1.0" or "HTTP/1.1".
	HTTPVersion string

	// Prefix is every byte read from the client; its capacity is capped so an
	// append by the caller cannot overwrite anything.
	Prefix []byte
	// Malformed says why the bytes could not be parsed as the protocol they
	// claim; empty unless Stop is StopMalformed.
	Malformed string
}

// SniffOptions bound how long and how much Sniff reads.
type SniffOptions struct {
	// Deadline is how long the client has, from Sniff's start, to send the
	// whole first message. Default 5s. A long deadline lets a silent client
	// hold a proxy goroutine that long.
	Deadline time.Duration
	// MaxBytes caps the bytes read, for every protocol. Default 16 KiB+5:
	// one full TLS record. Larger ClientHellos (many PSK identities, large
	// post-quantum key shares) end as StopLimit.
	MaxBytes int
}

// DefaultSniffMaxBytes is the default SniffOptions.MaxBytes: one TLS record
// of the largest plaintext size (2^14) plus its 5-byte header.
const DefaultSniffMaxBytes = 1<<14 + 5

// DefaultSniffDeadline is the default SniffOptions.Deadline.
const DefaultSniffDeadline = 5 * time.Second

const (
	// sniffInitialBuf covers typical ClientHellos (about 1.5 KiB with a
	// hybrid post-quantum key share) and request heads in one allocation.
	sniffInitialBuf = 4096
	// maxZeroReads stops a broken net.Conn that returns (0, nil) forever from
	// spinning until the deadline.
	maxZeroReads = 100
)

// Sniff reads the first bytes of c, without consuming anything it does not
// hand back in Prefix, until it knows what protocol the client speaks and
// which name it asked for, or until the deadline, EOF or the size bound.
//
// It sets a read deadline on c and clears it before returning. The error is
// non-nil only for a failed read other than deadline or EOF (Stop is then
// StopError, and Prefix still holds what was read) or a failure to set the
// deadline; timeouts, early closes and malformed bytes are outcomes, told by
// Stop.
func Sniff(c net.Conn, opts SniffOptions) (Sniffed, error) {
	if opts.Deadline <= 0 {
		opts.Deadline = DefaultSniffDeadline
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultSniffMaxBytes
	}
	if err := c.SetReadDeadline(time.Now().Add(opts.Deadline)); err != nil {
		return Sniffed{Protocol: ProtocolNone, Stop: StopError}, fmt.Errorf("set read deadline: %w", err)
	}
	// Left set, the deadline would cut the proxied stream later. Clearing
	// fails only on a closed conn (net.Pipe's also once the peer closed),
	// whose next use reports that itself; it must not turn an EOF outcome
	// into an error.
	defer c.SetReadDeadline(time.Time{})

	sn := sniffer{max: opts.MaxBytes}
	buf := make([]byte, 0, min(sniffInitialBuf, opts.MaxBytes))
	zeroReads := 0
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= opts.MaxBytes {
				return sn.result(buf, StopLimit), nil
			}
			grown := make([]byte, len(buf), min(2*cap(buf), opts.MaxBytes))
			copy(grown, buf)
			buf = grown
		}
		n, rerr := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			zeroReads = 0
			if stop, done := sn.feed(buf); done {
				return sn.result(buf, stop), nil
			}
		}
		switch {
		case rerr == nil:
			if n == 0 {
				if zeroReads++; zeroReads >= maxZeroReads {
					return sn.result(buf, StopError), fmt.Errorf("read client: %w", io.ErrNoProgress)
				}
			}
		case errors.Is(rerr, io.EOF):
			return sn.result(buf, StopEOF), nil
		case isTimeout(rerr):
			return sn.result(buf, StopTimeout), nil
		default:
			return sn.result(buf, StopError), fmt.Errorf("read client: %w", rerr)
		}
	}
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// sniffer is the incremental state of one Sniff: each read appends to one
// buffer and feed looks only at what it has not settled yet.
type sniffer struct {
	max   int
	proto Protocol // "" until the first bytes decide

	// HTTP/1.x: the method matched at classification, how far the buffer has
	// been scanned for line ends, and whether the request line was checked.
	method      string
	scanned     int
	lineChecked bool

	tls tlsReassembly

	out       Sniffed // name fields, filled only on a complete parse
	malformed string
}

// feed looks at the whole buffer read so far and says whether reading can
// stop, and why.
func (sn *sniffer) feed(buf []byte) (StopReason, bool) {
	if sn.proto == "" {
		sn.classify(buf)
		if sn.proto == "" {
			return "", false
		}
	}
	switch sn.proto {
	case ProtocolOpaque:
		// Nothing more is to be learnt from more bytes; waiting would only
		// delay a server-speaks-first or chatty protocol.
		return StopComplete, true
	case ProtocolH2C:
		if n := min(len(buf), len(h2Preface)); string(buf[:n]) != h2Preface[:n] {
			return sn.fail("bad HTTP/2 connection preface")
		}
		if len(buf) >= len(h2Preface) {
			// The name is in the HEADERS frame's :authority, HPACK-coded and
			// possibly Huffman-coded; decoding it is left out on purpose, so
			// h2c gives only the original IP and port, like opaque.
			return StopComplete, true
		}
		return "", false
	case ProtocolTLS:
		return sn.feedTLS(buf)
	case ProtocolHTTP:
		return sn.feedHTTP(buf)
	}
	return "", false
}

func (sn *sniffer) fail(why string) (StopReason, bool) {
	sn.malformed = why
	return StopMalformed, true
}

func (sn *sniffer) result(buf []byte, stop StopReason) Sniffed {
	s := Sniffed{Protocol: sn.proto, Stop: stop, Prefix: buf[:len(buf):len(buf)]}
	if stop == StopComplete {
		s = sn.out
		s.Protocol, s.Stop, s.Prefix = sn.proto, stop, buf[:len(buf):len(buf)]
	}
	if stop == StopMalformed {
		s.Malformed = sn.malformed
	}
	if s.Protocol == "" {
		// Bytes that stopped short of deciding (a lone "G", say) are not a
		// protocol this sniffer knows.
		s.Protocol = ProtocolOpaque
	}
	if len(buf) == 0 {
		s.Protocol = ProtocolNone
	}
	return s
}

// h2Preface is the HTTP/2 client connection preface (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// httpMethods are the methods that classify bytes as HTTP/1.x. A list, not
// any token: SSH's "SSH-2.0-…" banner and the like are tokens too, and taking
// them for HTTP would hold them until the deadline waiting for a head.
var httpMethods = [...]string{
	"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
	// WebDAV and CalDAV, which agents' file and calendar tools speak.
	"PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH", "MKCALENDAR",
}

// classify decides the protocol from the first bytes, or leaves sn.proto
// empty while they are still a prefix of something known.
func (sn *sniffer) classify(b []byte) {
	if b[0] == recordTypeHandshake {
		sn.proto = ProtocolTLS
		return
	}
	// PRI is reserved for the preface (RFC 9113 §3.4): "PRI " claims h2c,
	// and feed judges the rest of the preface.
	if len(b) >= 4 && string(b[:4]) == "PRI " {
		sn.proto = ProtocolH2C
		return
	}
	if len(b) < 4 && string(b) == "PRI "[:len(b)] {
		return
	}
	undecided := false
	for _, m := range httpMethods {
		if len(b) > len(m) {
			if string(b[:len(m)]) == m && b[len(m)] == ' ' {
				sn.proto, sn.method = ProtocolHTTP, m
				return
			}
		} else if m[:len(b)] == string(b) {
			undecided = true
		}
	}
	if !undecided {
		sn.proto = ProtocolOpaque
	}
}

// ---- TLS ----

const (
	recordTypeHandshake  = 22
	handshakeClientHello = 1
	maxRecordPlaintext   = 1 << 14
	extServerName        = 0
	extALPN              = 16
	extSupportedVersions = 43
	extECH               = 0xfe0d
)

// tlsReassembly gathers the handshake bytes of complete records, since a
// ClientHello may be fragmented over several records (RFC 8446 §5.1).
type tlsReassembly struct {
	off int    // start of the first record not yet consumed
	hs  []byte // handshake bytes of the consumed records
}

func (sn *sniffer) feedTLS(buf []byte) (StopReason, bool) {
	t := &sn.tls
	for {
		rec := buf[t.off:]
		// Judge the header as soon as its bytes are in, so that junk after a
		// 0x16 ends at once instead of at the deadline.
		if len(rec) >= 2 && rec[1] != 3 {
			return sn.fail(fmt.Sprintf("tls record version major %d, not 3", rec[1]))
		}
		if len(rec) < 5 {
			return "", false
		}
		if rec[0] != recordTypeHandshake {
			// Handshake records may not be interleaved with other types
			// (RFC 8446 §5.1), and nothing may precede the ClientHello.
			return sn.fail(fmt.Sprintf("tls record type %d before the ClientHello ended", rec[0]))
		}
		n := int(rec[3])<<8 | int(rec[4])
		switch {
		case n == 0:
			return sn.fail("empty tls handshake record")
		case n > maxRecordPlaintext:
			return sn.fail(fmt.Sprintf("tls record of %d bytes exceeds 2^14", n))
		case t.off+5+n > sn.max:
			return StopLimit, true
		case len(rec) < 5+n:
			return "", false
		}
		payload := rec[5 : 5+n : 5+n]
		t.off += 5 + n
		if t.hs == nil {
			// The common case, one record: parse in place. The capped
			// capacity makes a later append copy instead of overwriting buf.
			t.hs = payload
		} else {
			t.hs = append(t.hs, payload...)
		}
		if len(t.hs) < 4 {
			continue
		}
		if t.hs[0] != handshakeClientHello {
			return sn.fail(fmt.Sprintf("first tls handshake message is type %d, not ClientHello", t.hs[0]))
		}
		need := 4 + (int(t.hs[1])<<16 | int(t.hs[2])<<8 | int(t.hs[3]))
		if 5+need > sn.max {
			return StopLimit, true
		}
		if len(t.hs) < need {
			continue
		}
		if len(t.hs) > need {
			// A server would take these bytes for a second handshake
			// message; what it does with them is not ours to guess.
			return sn.fail("tls handshake data after the ClientHello in its record")
		}
		if why := sn.parseClientHello(t.hs[4:need]); why != "" {
			return sn.fail(why)
		}
		return StopComplete, true
	}
}

// parseClientHello parses a ClientHello body (RFC 8446 §4.1.2, RFC 5246
// §7.4.1.2) into sn.out, or says why it is malformed. Fields are set only
// when the whole message is valid.
func (sn *sniffer) parseClientHello(body []byte) string {
	in := cryptobyte.String(body)
	var (
		legacyVersion                   uint16
		sessionID, suites, compressions cryptobyte.String
	)
	if !in.ReadUint16(&legacyVersion) || !in.Skip(32) {
		return "ClientHello truncated before the session id"
	}
	if !in.ReadUint8LengthPrefixed(&sessionID) || len(sessionID) > 32 {
		return "ClientHello session id malformed"
	}
	if !in.ReadUint16LengthPrefixed(&suites) || len(suites) < 2 || len(suites)%2 != 0 {
		return "ClientHello cipher suites malformed"
	}
	if !in.ReadUint8LengthPrefixed(&compressions) || len(compressions) < 1 {
		return "ClientHello compression methods malformed"
	}
	var (
		sni, alpnList cryptobyte.String
		ech           bool
		maxVersion    = legacyVersion
	)
	// Before TLS 1.3 a ClientHello may end here, without extensions.
	if !in.Empty() {
		var exts cryptobyte.String
		if !in.ReadUint16LengthPrefixed(&exts) || !in.Empty() {
			return "ClientHello extensions block malformed"
		}
		// A second server_name could be read by the server while the policy
		// saw the first, so every duplicate is refused (RFC 8446 §4.2). One
		// bit per extension type: 8 KiB on the stack, no allocation.
		var seen [1 << 16 / 64]uint64
		for !exts.Empty() {
			var typ uint16
			var data cryptobyte.String
			if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
				return "ClientHello extension truncated"
			}
			if seen[typ/64]&(1<<(typ%64)) != 0 {
				return fmt.Sprintf("ClientHello repeats extension %d", typ)
			}
			seen[typ/64] |= 1 << (typ % 64)
			var why string
			switch typ {
			case extServerName:
				sni, why = parseServerName(data)
			case extALPN:
				alpnList, why = checkALPN(data)
			case extSupportedVersions:
				maxVersion, why = parseSupportedVersions(data)
			case extECH:
				// ECHClientHello starts with its type: outer (0) or inner (1).
				if len(data) == 0 || data[0] > 1 {
					why = "encrypted_client_hello extension malformed"
				}
				ech = true
			}
			if why != "" {
				return why
			}
		}
	}
	sn.out.SNI = lowerASCII(sni)
	sn.out.ALPN = splitALPN(alpnList)
	sn.out.ECH = ech
	sn.out.TLSVersion = legacyVersion
	sn.out.TLSMaxVersion = maxVersion
	return ""
}

// parseServerName returns the single host_name of a server_name extension
// (RFC 6066 §3).
func parseServerName(data cryptobyte.String) (cryptobyte.String, string) {
	var list, name cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return nil, "server_name extension malformed"
	}
	for !list.Empty() {
		var typ uint8
		var entry cryptobyte.String
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&entry) {
			return nil, "server_name extension malformed"
		}
		if typ != 0 {
			// No other name type is defined; one would be for a future
			// server to read, and carries no name the policy knows.
			continue
		}
		if name != nil {
			return nil, "server_name has more than one host_name"
		}
		// RFC 6066 forbids the trailing dot, which also keeps
		// "example.com." from slipping past a rule for "example.com".
		if !validHostName(entry, false) {
			return nil, fmt.Sprintf("server_name %s is not a host name", quoteShort(entry))
		}
		name = entry
	}
	return name, ""
}

// checkALPN validates an ALPN extension (RFC 7301 §3.1) and returns its
// protocol_name_list.
func checkALPN(data cryptobyte.String) (cryptobyte.String, string) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return nil, "application_layer_protocol_negotiation extension malformed"
	}
	for rest := list; !rest.Empty(); {
		var p cryptobyte.String
		if !rest.ReadUint8LengthPrefixed(&p) || p.Empty() {
			return nil, "application_layer_protocol_negotiation extension malformed"
		}
	}
	return list, ""
}

// splitALPN turns a validated protocol_name_list into strings that share one
// allocation.
func splitALPN(list cryptobyte.String) []string {
	if list == nil {
		return nil
	}
	count := 0
	for rest := list; !rest.Empty(); count++ {
		var p cryptobyte.String
		rest.ReadUint8LengthPrefixed(&p)
	}
	all := string(list)
	out := make([]string, 0, count)
	for i := 0; i < len(all); {
		n := int(all[i])
		out = append(out, all[i+1:i+1+n])
		i += 1 + n
	}
	return out
}

// parseSupportedVersions returns the highest non-GREASE version offered
// (RFC 8446 §4.2.1).
func parseSupportedVersions(data cryptobyte.String) (uint16, string) {
	var list cryptobyte.String
	if !data.ReadUint8LengthPrefixed(&list) || !data.Empty() || len(list) < 2 || len(list)%2 != 0 {
		return 0, "supported_versions extension malformed"
	}
	var best uint16
	for !list.Empty() {
		var v uint16
		list.ReadUint16(&v)
		if !isGREASE(v) && v > best {
			best = v
		}
	}
	if best == 0 {
		return 0, "supported_versions offers only GREASE"
	}
	return best, ""
}

// isGREASE reports the reserved values 0x0a0a, 0x1a1a, … 0xfafa (RFC 8701).
func isGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>8 == v&0xff
}

// ---- HTTP/1.x ----

func (sn *sniffer) feedHTTP(buf []byte) (StopReason, bool) {
	for {
		i := bytes.IndexByte(buf[sn.scanned:], '\n')
		if i < 0 {
			sn.scanned = len(buf)
			return "", false
		}
		lf := sn.scanned + i
		sn.scanned = lf + 1
		if lf == 0 || buf[lf-1] != '\r' {
			// A bare LF ends lines for some servers and not for others; a
			// head they would split differently is refused, and at once,
			// since "\r\n\r\n" may never come.
			return sn.fail("bare LF in http head")
		}
		if !sn.lineChecked {
			// The request line alone can show the bytes are not HTTP/1.x
			// (HTTP/0.9, an HTTP/2 version), without waiting for a head.
			sn.lineChecked = true
			if why := sn.parseRequestLine(buf[:lf-1]); why != "" {
				return sn.fail(why)
			}
		}
		if lf >= 3 && string(buf[lf-3:lf+1]) == "\r\n\r\n" {
			if why := sn.parseHead(buf[:lf+1]); why != "" {
				return sn.fail(why)
			}
			return StopComplete, true
		}
	}
}

// parseRequestLine checks "METHOD SP request-target SP HTTP-version"
// (RFC 9112 §3) and records the method, target and version.
func (sn *sniffer) parseRequestLine(line []byte) string {
	rest := line[len(sn.method)+1:]
	sp := bytes.IndexByte(rest, ' ')
	if sp <= 0 {
		return "http request line malformed"
	}
	target, version := rest[:sp], rest[sp+1:]
	for _, c := range target {
		// URIs are ASCII (RFC 3986); raw spaces, controls and bytes above
		// 0x7e are what request smuggling and log injection are made of.
		if c <= ' ' || c >= 0x7f {
			return "http request target has a space, control or non-ASCII byte"
		}
	}
	switch string(version) {
	case "HTTP/1.1":
		sn.out.HTTPVersion = "HTTP/1.1"
	case "HTTP/1.0":
		sn.out.HTTPVersion = "HTTP/1.0"
	default:
		return fmt.Sprintf("http version %s not supported", quoteShort(version))
	}
	sn.out.Method = sn.method
	sn.out.Path = string(target)
	return ""
}

// parseHead checks the header lines of a complete head (request line
// already checked) and settles Host and HostPort.
func (sn *sniffer) parseHead(head []byte) string {
	lineEnd := bytes.Index(head, []byte("\r\n"))
	rest := head[lineEnd+2 : len(head)-2] // header lines, each ending "\r\n"
	var hostHeader []byte
	haveHost := false
	for len(rest) > 0 {
		end := bytes.Index(rest, []byte("\r\n"))
		line := rest[:end]
		rest = rest[end+2:]
		if line[0] == ' ' || line[0] == '\t' {
			// Obsolete line folding (RFC 9112 §5.2) could hide a Host value
			// on a continuation line; servers disagree on it.
			return "http header line folding"
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return "http header line without a name"
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		for _, c := range name {
			if !isTokenChar(c) {
				// Covers "Host : x": whitespace before the colon must be
				// refused (RFC 9112 §5.1), as servers read it differently.
				return fmt.Sprintf("http header name %s is not a token", quoteShort(name))
			}
		}
		for _, c := range value {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return fmt.Sprintf("http header %s has a control character", quoteShort(name))
			}
		}
		if !asciiEqualFold(name, "host") {
			continue
		}
		if haveHost {
			return "http request has two Host headers"
		}
		haveHost, hostHeader = true, value
	}

	authority, why := targetAuthority(sn.method, sn.out.Path)
	if why != "" {
		return why
	}
	if !haveHost && sn.out.HTTPVersion == "HTTP/1.1" && sn.method != "CONNECT" {
		// RFC 9112 §3.2 makes servers refuse this; CONNECT is spared, as
		// by net/http, because its target is the authority.
		return "HTTP/1.1 request without Host"
	}
	var host, port string
	if len(hostHeader) > 0 {
		var ok bool
		if host, port, ok = splitAuthority(string(hostHeader), false); !ok {
			return fmt.Sprintf("http Host header %s is not host[:port]", quoteShort(hostHeader))
		}
	}
	// An empty Host header is legal for a target without authority (RFC
	// 9112 §3.2) and names nothing: Host stays empty.
	if authority != "" {
		h, p, ok := splitAuthority(authority, sn.method == "CONNECT")
		if !ok {
			return fmt.Sprintf("http request target authority %s is not host[:port]", quoteShort([]byte(authority)))
		}
		if haveHost && !strings.EqualFold(h, host) {
			// The target wins by the RFC, but a server or proxy upstream
			// might go by the header: the policy must not see one name
			// while the request reaches another.
			return "http Host header disagrees with the request target"
		}
		host, port = h, p
	}
	sn.out.Host, sn.out.HostPort = host, port
	return ""
}

// targetAuthority returns the authority a request target carries (absolute
// form "scheme://authority/…", or the authority form of CONNECT), "" for the
// origin form "/…" and OPTIONS "*", or why the target is malformed.
func targetAuthority(method, target string) (string, string) {
	switch {
	case method == "CONNECT":
		return target, ""
	case target == "*":
		if method != "OPTIONS" {
			return "", "http request target * outside OPTIONS"
		}
		return "", ""
	case target[0] == '/':
		return "", ""
	}
	i := strings.Index(target, "://")
	if i <= 0 || !isScheme(target[:i]) {
		return "", "http request target is neither a path nor an absolute URI"
	}
	auth := target[i+3:]
	if j := strings.IndexAny(auth, "/?#"); j >= 0 {
		auth = auth[:j]
	}
	if auth == "" {
		return "", "http absolute request target without authority"
	}
	if strings.IndexByte(auth, '@') >= 0 {
		// Userinfo is deprecated for http(s) (RFC 9110 §4.2.4) and is the
		// classic way to make "trusted.com@evil.com" look like trusted.com.
		return "", "http request target has userinfo"
	}
	return auth, ""
}

// splitAuthority splits "host[:port]" with host a DNS name, an IPv4 literal
// or a bracketed IPv6 literal; host and port are substrings of s.
func splitAuthority(s string, requirePort bool) (host, port string, ok bool) {
	hostPart, havePort := s, false
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", false
		}
		host = s[1:end]
		switch after := s[end+1:]; {
		case after == "":
		case after[0] == ':':
			port, havePort = after[1:], true
		default:
			return "", "", false
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return "", "", false
		}
	} else {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			hostPart, port, havePort = s[:i], s[i+1:], true
		}
		if !validHostName(hostPart, true) {
			return "", "", false
		}
		host = hostPart
	}
	if requirePort && (!havePort || port == "") {
		return "", "", false
	}
	// An empty port ("host:") is allowed by RFC 3986 and means the default.
	if len(port) > 5 {
		return "", "", false
	}
	v := 0
	for _, c := range []byte(port) {
		if c < '0' || c > '9' {
			return "", "", false
		}
		v = v*10 + int(c-'0')
	}
	if v > 65535 {
		return "", "", false
	}
	return host, port, true
}

// ---- shared helpers ----

// validHostName checks the character set and lengths of a DNS name: labels
// of 1–63 letters, digits, '-' or '_', at most 253 bytes. It does not
// enforce LDH rules further (underscores, label-edge hyphens), since real
// names break them; its job is to refuse what could confuse a name match:
// spaces, controls, '*', '/', '@', ':', '%', non-ASCII, empty labels.
func validHostName[T ~string | ~[]byte](name T, trailingDot bool) bool {
	n := len(name)
	if trailingDot && n > 1 && name[n-1] == '.' {
		n--
	}
	if n == 0 || n > 253 {
		return false
	}
	label := 0
	for i := 0; i < n; i++ {
		c := name[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		if label++; label > 63 {
			return false
		}
	}
	return label > 0
}

// lowerASCII returns b lowercased, in one allocation whichever the case.
func lowerASCII(b []byte) string {
	if b == nil {
		return ""
	}
	if !bytes.ContainsFunc(b, func(r rune) bool { return 'A' <= r && r <= 'Z' }) {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b))
	for _, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

func asciiEqualFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	return bytes.TrimFunc(b, func(r rune) bool { return r == ' ' || r == '\t' })
}

// isTokenChar reports tchar (RFC 9110 §5.6.2).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// isScheme reports scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
func isScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		alpha := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
		if !alpha && (i == 0 || !('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return s != ""
}

// quoteShort quotes at most 64 bytes of client-sent junk for a Malformed
// message, in ASCII, so a reason never carries a whole hostile header nor
// raw bytes into logs and receipts.
func quoteShort(b []byte) string {
	const max = 64
	if len(b) > max {
		return fmt.Sprintf("%+q…", b[:max])
	}
	return fmt.Sprintf("%+q", b)
}

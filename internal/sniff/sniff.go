package sniff

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
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
	// StopLimit: the message does not fit in Options.MaxBytes, either
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

// Options bound how long and how much Sniff reads.
type Options struct {
	// Deadline is how long the client has, from Sniff's start, to send the
	// whole first message. Default 5s. A long deadline lets a silent client
	// hold a proxy goroutine that long.
	Deadline time.Duration
	// MaxBytes caps the bytes read, for every protocol. Default 16 KiB+5:
	// one full TLS record. Larger ClientHellos (many PSK identities, large
	// post-quantum key shares) end as StopLimit.
	MaxBytes int
}

// DefaultMaxBytes is the default Options.MaxBytes: one TLS record
// of the largest plaintext size (2^14) plus its 5-byte header.
const DefaultMaxBytes = 1<<14 + 5

// DefaultDeadline is the default Options.Deadline.
const DefaultDeadline = 5 * time.Second

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
func Sniff(c net.Conn, opts Options) (Sniffed, error) {
	if opts.Deadline <= 0 {
		opts.Deadline = DefaultDeadline
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
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
		case IsTimeout(rerr):
			return sn.result(buf, StopTimeout), nil
		default:
			return sn.result(buf, StopError), fmt.Errorf("read client: %w", rerr)
		}
	}
}

func IsTimeout(err error) bool {
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

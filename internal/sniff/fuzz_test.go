package sniff

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// FuzzSniff feeds arbitrary bytes, in reads of arbitrary size, ending in
// EOF or a timeout, under the default or a small size bound, and checks the
// invariants the proxy relies on. Where the sniffer reports a complete
// ClientHello or request head that crypto/tls or net/http also parses, they
// must agree on the name (and ALPN list, and method).
func FuzzSniff(f *testing.F) {
	hello := captureClientHello(f, &tls.Config{ServerName: "seed.example.com", NextProtos: []string{"h2", "http/1.1"}})
	seeds := [][]byte{
		hello,
		refragment(f, hello, 40),
		tlsRecord(helloMsg([]ext{sniExt(host("a.example"), host("b.example"))}, nil)),
		tlsRecord(helloMsg([]ext{sniExt(sniName{1, "x"}, host("A.example")), alpnExt("h2"), versionsExt(0x0a0a, 0x0304), {0xfe0d, []byte{0, 1}}}, nil)),
		[]byte("GET http://a.example:8080/x HTTP/1.1\r\nHost: a.example:8080\r\n\r\n"),
		[]byte("GET / HTTP/1.1\r\nHost: [::1]:8080\r\nhost: b\r\n\r\n"),
		[]byte("CONNECT a.example:443 HTTP/1.1\r\n\r\n"),
		[]byte("OPTIONS * HTTP/1.0\r\n\r\n"),
		[]byte(h2Preface),
		[]byte("PRI * HTTP/2.0\r\n\r\nXX"),
		[]byte("SSH-2.0-x\r\n"),
		{},
	}
	for _, s := range seeds {
		f.Add(s, uint8(0), false, false)
		f.Add(s, uint8(1), true, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8, timeout, small bool) {
		opts := Options{}
		if small {
			opts.MaxBytes = 64
		}
		max := DefaultMaxBytes
		if small {
			max = 64
		}
		var end error = io.EOF
		if timeout {
			end = os.ErrDeadlineExceeded
		}
		c := &chunkConn{data: data, chunk: int(chunk)%64 + 1, end: end}
		s, err := Sniff(c, opts)
		if err != nil {
			t.Fatalf("Sniff: %v (only EOF and timeouts were fed)", err)
		}
		if !c.deadline.IsZero() {
			t.Error("deadline left set")
		}
		if !slices.Contains([]Protocol{ProtocolTLS, ProtocolHTTP, ProtocolH2C, ProtocolOpaque, ProtocolNone}, s.Protocol) {
			t.Fatalf("Protocol %q", s.Protocol)
		}
		if !slices.Contains([]StopReason{StopComplete, StopMalformed, StopTimeout, StopEOF, StopLimit}, s.Stop) {
			t.Fatalf("Stop %q", s.Stop)
		}
		// Prefix is exactly the bytes taken from the conn, no more, no less.
		if !bytes.Equal(s.Prefix, data[:c.pos]) || len(s.Prefix) > max {
			t.Fatalf("Prefix has %d bytes; %d were read, bound %d", len(s.Prefix), c.pos, max)
		}
		if len(s.Prefix) != cap(s.Prefix) {
			t.Error("Prefix has spare capacity an append could scribble on")
		}
		if (s.Stop == StopEOF || s.Stop == StopTimeout) && len(s.Prefix) != len(data) {
			t.Fatalf("stopped on %s with %d of %d bytes", s.Stop, len(s.Prefix), len(data))
		}
		if (s.Protocol == ProtocolNone) != (len(s.Prefix) == 0) {
			t.Fatalf("Protocol %q with %d bytes", s.Protocol, len(s.Prefix))
		}
		if (s.Malformed != "") != (s.Stop == StopMalformed) {
			t.Fatalf("Malformed %q with Stop %q", s.Malformed, s.Stop)
		}
		names := s
		names.Protocol, names.Stop, names.Prefix, names.Malformed = "", "", nil, ""
		if s.Stop != StopComplete && !reflect.DeepEqual(names, Sniffed{}) {
			t.Fatalf("name fields set on a %s outcome: %+v", s.Stop, names)
		}
		if s.Stop != StopComplete {
			return
		}
		switch s.Protocol {
		case ProtocolTLS:
			if s.SNI != "" && (!validHostName(s.SNI, false) || strings.ToLower(s.SNI) != s.SNI) {
				t.Fatalf("SNI %q is not a lowercase host name", s.SNI)
			}
			if info, ok := goClientHello(s.Prefix); ok {
				if strings.ToLower(info.ServerName) != s.SNI || !slices.Equal(info.SupportedProtos, s.ALPN) {
					t.Fatalf("crypto/tls read SNI %q ALPN %q; sniffer %q %q", info.ServerName, info.SupportedProtos, s.SNI, s.ALPN)
				}
			}
		case ProtocolHTTP:
			if s.Method == "" || s.Path == "" || (s.HTTPVersion != "HTTP/1.1" && s.HTTPVersion != "HTTP/1.0") {
				t.Fatalf("complete HTTP without request line: %+v", names)
			}
			if s.HTTPVersion == "HTTP/1.1" && s.Method != "CONNECT" && !bytes.Contains(bytes.ToLower(s.Prefix), []byte("\nhost:")) {
				t.Fatalf("HTTP/1.1 accepted without a Host header")
			}
			if !bytes.Contains(s.Prefix, []byte("\r\n\r\n")) {
				t.Fatal("complete HTTP head without its blank line")
			}
			// net/http refuses some heads the sniffer passes (bad percent
			// escapes, say), which upstream servers then refuse too; where
			// it reads one, it must see the same method and host.
			if req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(s.Prefix))); err == nil {
				h := req.Host
				if hh, _, err := net.SplitHostPort(h); err == nil {
					h = hh
				}
				h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
				if req.Method != s.Method || !strings.EqualFold(h, s.Host) {
					t.Fatalf("net/http read %s %q; sniffer %s %q", req.Method, req.Host, s.Method, s.Host)
				}
			}
		}
	})
}

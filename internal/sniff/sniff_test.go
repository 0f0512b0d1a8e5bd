package sniff

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// long is the deadline of tests that expect Sniff to stop on its own: were it
// to wait for the deadline instead, Stop would say timeout and the test fail.
const long = time.Minute

// ---- helpers ----

// chunkConn serves data in reads of at most chunk bytes, then returns end
// (io.EOF when nil). It records deadlines so tests can see them cleared.
type chunkConn struct {
	data     []byte
	chunk    int
	end      error
	pos      int
	deadline time.Time
	setCount int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if c.pos >= len(c.data) {
		if c.end != nil {
			return 0, c.end
		}
		return 0, io.EOF
	}
	n := min(len(p), c.chunk, len(c.data)-c.pos)
	copy(p, c.data[c.pos:c.pos+n])
	c.pos += n
	return n, nil
}

func (c *chunkConn) Write(p []byte) (int, error)        { return len(p), nil }
func (c *chunkConn) Close() error                       { return nil }
func (c *chunkConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *chunkConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (c *chunkConn) SetDeadline(t time.Time) error      { return c.SetReadDeadline(t) }
func (c *chunkConn) SetWriteDeadline(t time.Time) error { return nil }
func (c *chunkConn) SetReadDeadline(t time.Time) error {
	c.deadline = t
	c.setCount++
	return nil
}

// recordConn keeps a copy of everything written through it.
type recordConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.buf.Write(p)
	r.mu.Unlock()
	return r.Conn.Write(p)
}

func (r *recordConn) written() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

// feedPipe returns the server end of a net.Pipe whose client end writes each
// chunk with its own Write (so each arrives in its own reads), then closes if
// closeAfter is set; otherwise it stays open until the test ends.
func feedPipe(t *testing.T, chunks [][]byte, closeAfter bool) net.Conn {
	t.Helper()
	srv, cli := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, c := range chunks {
			if _, err := cli.Write(c); err != nil {
				return
			}
		}
		if closeAfter {
			cli.Close()
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		cli.Close()
		<-done
	})
	return srv
}

// tcpPair returns both ends of a loopback TCP connection. Bytes written to
// the client end before Sniff starts sit in the kernel, so a test of what
// happens after them does not depend on goroutine scheduling.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

// splitBytes cuts b into pieces of n bytes.
func splitBytes(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

// captureClientHello returns the first flight of a crypto/tls client: the
// ClientHello in one record, as Go sends it.
func captureClientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	srv, cli := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tls.Client(cli, cfg).Handshake() // fails when srv closes; only its first write matters
	}()
	defer func() {
		srv.Close()
		cli.Close()
		<-done
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(srv, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(srv, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

// refragment re-frames the handshake payload of TLS records into records
// of at most size bytes each, as a client may legally send it.
func refragment(t testing.TB, records []byte, size int) []byte {
	t.Helper()
	var payload []byte
	for len(records) > 0 {
		n := int(records[3])<<8 | int(records[4])
		payload = append(payload, records[5:5+n]...)
		records = records[5+n:]
	}
	var out []byte
	for _, p := range splitBytes(payload, size) {
		out = append(out, 22, 3, 1, byte(len(p)>>8), byte(len(p)))
		out = append(out, p...)
	}
	return out
}

// goClientHello asks crypto/tls's server what it read from these bytes: the
// reference the sniffer's SNI and ALPN must agree with.
func goClientHello(prefix []byte) (*tls.ClientHelloInfo, bool) {
	var info *tls.ClientHelloInfo
	cfg := &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		info = chi
		return nil, errors.New("seen")
	}}
	conn := &chunkConn{data: prefix, chunk: len(prefix) + 1}
	tls.Server(conn, cfg).Handshake()
	return info, info != nil
}

// echConfigList builds an ECHConfigList (draft-ietf-tls-esni / RFC 9849
// §4) for a fresh X25519 key, enough for crypto/tls to send an ECH outer
// ClientHello carrying publicName as its SNI.
func echConfigList(t *testing.T, publicName string) []byte {
	t.Helper()
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0xfe0d)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint8(7)       // config_id
			b.AddUint16(0x0020) // DHKEM(X25519, HKDF-SHA256)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(key.PublicKey().Bytes()) })
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16(0x0001) // HKDF-SHA256
				b.AddUint16(0x0001) // AES-128-GCM
			})
			b.AddUint8(64) // maximum_name_length
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(publicName)) })
			b.AddUint16(0) // no extensions
		})
	})
	return b.BytesOrPanic()
}

// sniffFields is the part of Sniffed a table compares (Prefix is checked
// separately).
func sniffFields(s Sniffed) Sniffed {
	s.Prefix = nil
	return s
}

func checkSniff(t *testing.T, got Sniffed, err error, want Sniffed) {
	t.Helper()
	if err != nil {
		t.Fatalf("Sniff: %v", err)
	}
	if g := sniffFields(got); !reflect.DeepEqual(g, want) {
		t.Errorf("Sniff =\n %+v\nwant\n %+v", g, want)
	}
}

// ---- TLS ----

func TestSniffTLSClients(t *testing.T) {
	tests := []struct {
		name string
		cfg  *tls.Config
		want Sniffed
	}{
		{
			name: "tls13 sni and alpn",
			cfg:  &tls.Config{ServerName: "api.example.com", NextProtos: []string{"h2", "http/1.1"}},
			want: Sniffed{Protocol: ProtocolTLS, Stop: StopComplete, SNI: "api.example.com", ALPN: []string{"h2", "http/1.1"}, TLSVersion: tls.VersionTLS12, TLSMaxVersion: tls.VersionTLS13},
		},
		{
			name: "tls12 only, mixed case name lowercased",
			cfg:  &tls.Config{ServerName: "Models.Example.COM", MaxVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}},
			want: Sniffed{Protocol: ProtocolTLS, Stop: StopComplete, SNI: "models.example.com", ALPN: []string{"http/1.1"}, TLSVersion: tls.VersionTLS12, TLSMaxVersion: tls.VersionTLS12},
		},
		{
			name: "no sni",
			cfg:  &tls.Config{InsecureSkipVerify: true},
			want: Sniffed{Protocol: ProtocolTLS, Stop: StopComplete, TLSVersion: tls.VersionTLS12, TLSMaxVersion: tls.VersionTLS13},
		},
		{
			name: "ip literal sends no sni",
			cfg:  &tls.Config{ServerName: "192.0.2.1", NextProtos: []string{"h2"}},
			want: Sniffed{Protocol: ProtocolTLS, Stop: StopComplete, ALPN: []string{"h2"}, TLSVersion: tls.VersionTLS12, TLSMaxVersion: tls.VersionTLS13},
		},
		{
			name: "trailing dot stripped by the client",
			cfg:  &tls.Config{ServerName: "example.com."},
			want: Sniffed{Protocol: ProtocolTLS, Stop: StopComplete, SNI: "example.com", TLSVersion: tls.VersionTLS12, TLSMaxVersion: tls.VersionTLS13},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, cli := net.Pipe()
			rec := &recordConn{Conn: cli}
			done := make(chan struct{})
			go func() {
				defer close(done)
				tls.Client(rec, tt.cfg).Handshake()
			}()
			got, err := Sniff(srv, Options{Deadline: long})
			srv.Close()
			<-done
			checkSniff(t, got, err, tt.want)
			// The client waits for a ServerHello, so it wrote exactly the
			// ClientHello, and Sniff must have read exactly that.
			if w := rec.written(); !bytes.Equal(got.Prefix, w) {
				t.Errorf("Prefix has %d bytes, client wrote %d", len(got.Prefix), len(w))
			}
			info, ok := goClientHello(got.Prefix)
			if !ok {
				t.Fatal("crypto/tls server could not parse the prefix")
			}
			if strings.ToLower(info.ServerName) != got.SNI || !reflect.DeepEqual(info.SupportedProtos, got.ALPN) {
				t.Errorf("crypto/tls server read SNI %q ALPN %q, sniffer %q %q", info.ServerName, info.SupportedProtos, got.SNI, got.ALPN)
			}
		})
	}
}

func TestSniffTLSECH(t *testing.T) {
	cfg := &tls.Config{
		ServerName:                     "secret.example.com",
		MinVersion:                     tls.VersionTLS13,
		EncryptedClientHelloConfigList: echConfigList(t, "public.example.net"),
	}
	hello := captureClientHello(t, cfg)
	got, err := Sniff(feedPipe(t, [][]byte{hello}, false), Options{Deadline: long})
	if err != nil {
		t.Fatal(err)
	}
	if got.Stop != StopComplete || !got.ECH || got.SNI != "public.example.net" {
		t.Errorf("Stop %q ECH %v SNI %q, want complete, true, the outer public name", got.Stop, got.ECH, got.SNI)
	}
	if bytes.Contains(got.Prefix, []byte("secret.example.com")) {
		t.Error("the inner name is in the clear; the test did not exercise ECH")
	}
}

func TestSniffTLSOverTCP(t *testing.T) {
	cli, srv := tcpPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tls.Client(cli, &tls.Config{ServerName: "tcp.example.org", NextProtos: []string{"h2"}}).Handshake()
	}()
	got, err := Sniff(srv, Options{Deadline: long})
	srv.Close()
	<-done
	checkSniff(t, got, err, Sniffed{Protocol: ProtocolTLS, Stop: StopComplete, SNI: "tcp.example.org", ALPN: []string{"h2"}, TLSVersion: tls.VersionTLS12, TLSMaxVersion: tls.VersionTLS13})
}

func TestSniffTLSSplit(t *testing.T) {
	hello := captureClientHello(t, &tls.Config{ServerName: "split.example.com", NextProtos: []string{"h2", "http/1.1"}})
	want := Sniffed{Protocol: ProtocolTLS, Stop: StopComplete, SNI: "split.example.com", ALPN: []string{"h2", "http/1.1"}, TLSVersion: tls.VersionTLS12, TLSMaxVersion: tls.VersionTLS13}
	tests := []struct {
		name   string
		wire   []byte
		writes int // bytes per Write
	}{
		{"one-byte writes", hello, 1},
		{"records of 1 byte", refragment(t, hello, 1), 4096},
		{"records of 3 bytes, written 2 at a time", refragment(t, hello, 3), 2},
		{"records of 100 bytes, written 7 at a time", refragment(t, hello, 100), 7},
		{"records of 512 bytes", refragment(t, hello, 512), 4096},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Sniff(feedPipe(t, splitBytes(tt.wire, tt.writes), false), Options{Deadline: long})
			checkSniff(t, got, err, want)
			if !bytes.Equal(got.Prefix, tt.wire) {
				t.Errorf("Prefix has %d bytes, want the %d sent", len(got.Prefix), len(tt.wire))
			}
			if info, ok := goClientHello(got.Prefix); !ok || strings.ToLower(info.ServerName) != got.SNI {
				t.Errorf("crypto/tls server disagrees on %d-byte records: %v", len(tt.wire), info)
			}
		})
	}
}

func TestSniffTLSStopsAtHello(t *testing.T) {
	// Early data after the ClientHello arrives in the same read; it is the
	// client's too and must be in Prefix, but must not be waited for.
	hello := captureClientHello(t, &tls.Config{ServerName: "a.example"})
	wire := append(bytes.Clone(hello), 23, 3, 3, 0, 2, 'h', 'i')
	got, err := Sniff(feedPipe(t, [][]byte{wire}, false), Options{Deadline: long})
	if err != nil || got.Stop != StopComplete || got.SNI != "a.example" || !bytes.Equal(got.Prefix, wire) {
		t.Errorf("Sniff = %+v, %v; want complete a.example with all %d bytes", sniffFields(got), err, len(wire))
	}
}

// hello builds a ClientHello handshake message around the given extensions
// (type, data), in one record.
type ext struct {
	typ  uint16
	data []byte
}

func helloMsg(exts []ext, mutate func(b *cryptobyte.Builder)) []byte {
	var b cryptobyte.Builder
	b.AddUint8(1)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(0x0303)
		b.AddBytes(make([]byte, 32))
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, 32)) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(0x1301) })
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })
		if mutate != nil {
			mutate(b)
			return
		}
		if exts == nil {
			return
		}
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, e := range exts {
				b.AddUint16(e.typ)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.data) })
			}
		})
	})
	return b.BytesOrPanic()
}

func tlsRecord(msg []byte) []byte {
	return append([]byte{22, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
}

type sniName struct {
	typ  uint8
	name string
}

func sniExt(names ...sniName) ext {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, n := range names {
			b.AddUint8(n.typ)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(n.name)) })
		}
	})
	return ext{0, b.BytesOrPanic()}
}

func alpnExt(protos ...string) ext {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, p := range protos {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
		}
	})
	return ext{16, b.BytesOrPanic()}
}

func versionsExt(vs ...uint16) ext {
	var b cryptobyte.Builder
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, v := range vs {
			b.AddUint16(v)
		}
	})
	return ext{43, b.BytesOrPanic()}
}

func host(name string) sniName { return sniName{0, name} }

func TestSniffTLSCrafted(t *testing.T) {
	tls13 := versionsExt(0x0304, 0x0303)
	tests := []struct {
		name string
		wire []byte
		want Sniffed
	}{
		{
			name: "unknown name type skipped, GREASE versions skipped, ECH outer",
			wire: tlsRecord(helloMsg([]ext{
				sniExt(sniName{1, "not a host"}, host("Example.ORG")),
				versionsExt(0x2a2a, 0x0304, 0x0303),
				{0xfe0d, []byte{0, 0, 1, 0, 1, 7}},
				{0x1a1a, nil}, // a GREASE extension
			}, nil)),
			want: Sniffed{Protocol: ProtocolTLS, Stop: StopComplete, SNI: "example.org", ECH: true, TLSVersion: 0x0303, TLSMaxVersion: 0x0304},
		},
		{
			name: "no extensions at all (pre-TLS 1.3)",
			wire: tlsRecord(helloMsg(nil, nil)),
			want: Sniffed{Protocol: ProtocolTLS, Stop: StopComplete, TLSVersion: 0x0303, TLSMaxVersion: 0x0303},
		},
		{
			name: "underscore and digits",
			wire: tlsRecord(helloMsg([]ext{sniExt(host("my_bucket.s3.example.com")), alpnExt("x")}, nil)),
			want: Sniffed{Protocol: ProtocolTLS, Stop: StopComplete, SNI: "my_bucket.s3.example.com", ALPN: []string{"x"}, TLSVersion: 0x0303, TLSMaxVersion: 0x0303},
		},
	}
	malformed := []struct {
		name, why string
		wire      []byte
	}{
		{"two server_name extensions", "ClientHello repeats extension 0",
			tlsRecord(helloMsg([]ext{sniExt(host("a.example")), tls13, sniExt(host("b.example"))}, nil))},
		{"two host_name entries", "server_name has more than one host_name",
			tlsRecord(helloMsg([]ext{sniExt(host("a.example"), host("b.example"))}, nil))},
		{"space in name", `server_name "exa mple.com" is not a host name`,
			tlsRecord(helloMsg([]ext{sniExt(host("exa mple.com"))}, nil))},
		{"non-ASCII name", `server_name "ex\u00e4mple.com" is not a host name`,
			tlsRecord(helloMsg([]ext{sniExt(host("exämple.com"))}, nil))},
		{"NUL in name", `server_name "a.example\x00.evil" is not a host name`,
			tlsRecord(helloMsg([]ext{sniExt(host("a.example\x00.evil"))}, nil))},
		{"trailing dot", `server_name "example.com." is not a host name`,
			tlsRecord(helloMsg([]ext{sniExt(host("example.com."))}, nil))},
		{"empty label", `server_name "a..example" is not a host name`,
			tlsRecord(helloMsg([]ext{sniExt(host("a..example"))}, nil))},
		{"label over 63", `server_name "` + strings.Repeat("a", 64) + `"… is not a host name`,
			tlsRecord(helloMsg([]ext{sniExt(host(strings.Repeat("a", 64) + ".example"))}, nil))},
		{"wildcard", `server_name "*.example.com" is not a host name`,
			tlsRecord(helloMsg([]ext{sniExt(host("*.example.com"))}, nil))},
		{"empty host_name", `server_name "" is not a host name`,
			tlsRecord(helloMsg([]ext{sniExt(host(""))}, nil))},
		{"empty server_name list", "server_name extension malformed",
			tlsRecord(helloMsg([]ext{sniExt()}, nil))},
		{"server_name list length past its extension", "server_name extension malformed",
			tlsRecord(helloMsg([]ext{{0, []byte{0, 9, 0, 0, 1, 'a'}}}, nil))},
		{"empty ALPN protocol", "application_layer_protocol_negotiation extension malformed",
			tlsRecord(helloMsg([]ext{alpnExt("h2", "")}, nil))},
		{"empty ALPN list", "application_layer_protocol_negotiation extension malformed",
			tlsRecord(helloMsg([]ext{alpnExt()}, nil))},
		{"odd supported_versions", "supported_versions extension malformed",
			tlsRecord(helloMsg([]ext{{43, []byte{3, 3, 4, 3}}}, nil))},
		{"only GREASE versions", "supported_versions offers only GREASE",
			tlsRecord(helloMsg([]ext{versionsExt(0x0a0a)}, nil))},
		{"empty ECH", "encrypted_client_hello extension malformed",
			tlsRecord(helloMsg([]ext{{0xfe0d, nil}}, nil))},
		{"ECH of unknown type", "encrypted_client_hello extension malformed",
			tlsRecord(helloMsg([]ext{{0xfe0d, []byte{2}}}, nil))},
		{"extension length past the block", "ClientHello extension truncated",
			tlsRecord(helloMsg(nil, func(b *cryptobyte.Builder) {
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte{0, 0, 0, 5, 1}) })
			}))},
		{"bytes after the extensions block", "ClientHello extensions block malformed",
			tlsRecord(helloMsg(nil, func(b *cryptobyte.Builder) {
				b.AddUint16(0)
				b.AddUint8(0)
			}))},
		{"session id of 33 bytes", "ClientHello session id malformed",
			tlsRecord(func() []byte {
				m := helloMsg(nil, nil)
				m[4+34] = 33 // claims one more byte than the 32 there
				return m
			}())},
		{"truncated body", "ClientHello truncated before the session id",
			tlsRecord([]byte{1, 0, 0, 3, 3, 3, 0})},
		{"ServerHello first", "first tls handshake message is type 2, not ClientHello",
			tlsRecord([]byte{2, 0, 0, 0})},
		{"alert record after a fragment", "tls record type 21 before the ClientHello ended",
			append(refragment(t, tlsRecord(helloMsg(nil, nil)), 10)[:15], 21, 3, 3, 0, 2, 2, 40)},
		{"record version 2", "tls record version major 2, not 3",
			[]byte{22, 2, 0, 0, 10}},
		{"zero-length record", "empty tls handshake record",
			[]byte{22, 3, 1, 0, 0}},
		{"record over 2^14", "tls record of 16385 bytes exceeds 2^14",
			[]byte{22, 3, 1, 0x40, 0x01}},
		{"handshake data after the hello", "tls handshake data after the ClientHello in its record",
			tlsRecord(append(helloMsg(nil, nil), 20, 0, 0, 0))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Sniff(&chunkConn{data: tt.wire, chunk: 1 << 20}, Options{})
			checkSniff(t, got, err, tt.want)
		})
	}
	for _, tt := range malformed {
		t.Run(tt.name, func(t *testing.T) {
			// Written a byte at a time, so malformed bytes must be judged
			// as they come and not only when a whole buffer is in.
			for _, chunk := range []int{1 << 20, 1} {
				got, err := Sniff(&chunkConn{data: tt.wire, chunk: chunk}, Options{})
				checkSniff(t, got, err, Sniffed{Protocol: ProtocolTLS, Stop: StopMalformed, Malformed: tt.why})
				if !bytes.Equal(got.Prefix, tt.wire[:len(got.Prefix)]) {
					t.Error("Prefix is not what was sent")
				}
			}
		})
	}
}

func TestSniffTLSIncomplete(t *testing.T) {
	hello := captureClientHello(t, &tls.Config{ServerName: "partial.example"})
	part := hello[:len(hello)/2]

	t.Run("partial then close", func(t *testing.T) {
		got, err := Sniff(feedPipe(t, [][]byte{part}, true), Options{Deadline: long})
		checkSniff(t, got, err, Sniffed{Protocol: ProtocolTLS, Stop: StopEOF})
		if !bytes.Equal(got.Prefix, part) {
			t.Errorf("Prefix has %d bytes, want the %d sent", len(got.Prefix), len(part))
		}
	})
	t.Run("partial then stall", func(t *testing.T) {
		cli, srv := tcpPair(t)
		if _, err := cli.Write(part); err != nil {
			t.Fatal(err)
		}
		got, err := Sniff(srv, Options{Deadline: 100 * time.Millisecond})
		checkSniff(t, got, err, Sniffed{Protocol: ProtocolTLS, Stop: StopTimeout})
		if !bytes.Equal(got.Prefix, part) {
			t.Errorf("Prefix has %d bytes, want the %d sent", len(got.Prefix), len(part))
		}
	})
	t.Run("record header only, then close", func(t *testing.T) {
		got, err := Sniff(&chunkConn{data: hello[:3], chunk: 1}, Options{})
		checkSniff(t, got, err, Sniffed{Protocol: ProtocolTLS, Stop: StopEOF})
	})
}

func TestSniffTLSLimit(t *testing.T) {
	hello := captureClientHello(t, &tls.Config{ServerName: "big.example"})
	t.Run("record longer than the bound", func(t *testing.T) {
		got, err := Sniff(&chunkConn{data: hello, chunk: 1 << 20}, Options{MaxBytes: 100})
		checkSniff(t, got, err, Sniffed{Protocol: ProtocolTLS, Stop: StopLimit})
		if !bytes.Equal(got.Prefix, hello[:100]) {
			t.Errorf("Prefix has %d bytes, want the first 100", len(got.Prefix))
		}
	})
	t.Run("announced at the record header, before its bytes", func(t *testing.T) {
		got, err := Sniff(&chunkConn{data: hello, chunk: 5}, Options{MaxBytes: 100})
		checkSniff(t, got, err, Sniffed{Protocol: ProtocolTLS, Stop: StopLimit})
		if !bytes.Equal(got.Prefix, hello[:5]) {
			t.Errorf("Prefix has %d bytes, want the 5-byte header only", len(got.Prefix))
		}
	})
	t.Run("fragmented hello announcing more than the bound", func(t *testing.T) {
		wire := refragment(t, hello, 50)
		got, err := Sniff(&chunkConn{data: wire, chunk: 55}, Options{MaxBytes: 200})
		checkSniff(t, got, err, Sniffed{Protocol: ProtocolTLS, Stop: StopLimit})
		if !bytes.Equal(got.Prefix, wire[:55]) {
			t.Errorf("Prefix has %d bytes, want the first record (55) only", len(got.Prefix))
		}
	})
	t.Run("fits exactly", func(t *testing.T) {
		got, err := Sniff(&chunkConn{data: hello, chunk: 1 << 20}, Options{MaxBytes: len(hello)})
		if err != nil || got.Stop != StopComplete || got.SNI != "big.example" {
			t.Errorf("Sniff = %+v, %v; want complete", sniffFields(got), err)
		}
	})
}

// ---- HTTP ----

func TestSniffHTTPClient(t *testing.T) {
	tests := []struct {
		name   string
		proxy  string // non-empty: the client talks to it in absolute form
		h2c    bool
		method string
		url    string
		want   Sniffed
	}{
		{
			name: "origin form", method: "GET", url: "http://models.example.com:8080/v1/models?limit=5",
			want: Sniffed{Protocol: ProtocolHTTP, Stop: StopComplete, Method: "GET", Path: "/v1/models?limit=5", Host: "models.example.com", HostPort: "8080", HTTPVersion: "HTTP/1.1"},
		},
		{
			name: "absolute form through a proxy", proxy: "http://proxy.internal:3128", method: "DELETE", url: "http://api.example.com/v1/files/1",
			want: Sniffed{Protocol: ProtocolHTTP, Stop: StopComplete, Method: "DELETE", Path: "http://api.example.com/v1/files/1", Host: "api.example.com", HTTPVersion: "HTTP/1.1"},
		},
		{
			name: "connect through a proxy", proxy: "http://proxy.internal:3128", method: "GET", url: "https://api.example.com/",
			want: Sniffed{Protocol: ProtocolHTTP, Stop: StopComplete, Method: "CONNECT", Path: "api.example.com:443", Host: "api.example.com", HostPort: "443", HTTPVersion: "HTTP/1.1"},
		},
		{
			name: "ipv6 literal", method: "GET", url: "http://[::1]:8080/",
			want: Sniffed{Protocol: ProtocolHTTP, Stop: StopComplete, Method: "GET", Path: "/", Host: "::1", HostPort: "8080", HTTPVersion: "HTTP/1.1"},
		},
		{
			name: "h2c prior knowledge", h2c: true, method: "GET", url: "http://h2c.example.com/",
			want: Sniffed{Protocol: ProtocolH2C, Stop: StopComplete},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, cli := net.Pipe()
			rec := &recordConn{Conn: cli}
			tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return rec, nil }}
			if tt.proxy != "" {
				u, _ := url.Parse(tt.proxy)
				tr.Proxy = http.ProxyURL(u)
			}
			if tt.h2c {
				var p http.Protocols
				p.SetUnencryptedHTTP2(true)
				tr.Protocols = &p
			}
			defer tr.CloseIdleConnections()
			req, err := http.NewRequest(tt.method, tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				if resp, err := (&http.Client{Transport: tr}).Do(req); err == nil {
					resp.Body.Close()
				}
			}()
			got, err := Sniff(srv, Options{Deadline: long})
			srv.Close()
			<-done
			checkSniff(t, got, err, tt.want)
			if w := rec.written(); !bytes.HasPrefix(w, got.Prefix) || len(got.Prefix) == 0 {
				t.Errorf("Prefix %q is not what the client wrote (%q)", got.Prefix, w)
			}
		})
	}
}

func TestSniffHTTPRaw(t *testing.T) {
	ok := func(method, path, host, port, version string) Sniffed {
		return Sniffed{Protocol: ProtocolHTTP, Stop: StopComplete, Method: method, Path: path, Host: host, HostPort: port, HTTPVersion: version}
	}
	tests := []struct {
		name, head string
		want       Sniffed
	}{
		{"host with port", "GET /a HTTP/1.1\r\nHost: example.com:8443\r\n\r\n", ok("GET", "/a", "example.com", "8443", "HTTP/1.1")},
		{"ipv6 host with port", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", ok("GET", "/", "::1", "8080", "HTTP/1.1")},
		{"ipv6 host without port", "GET / HTTP/1.1\r\nHost: [2001:db8::7]\r\n\r\n", ok("GET", "/", "2001:db8::7", "", "HTTP/1.1")},
		{"lowercase header names, case kept in value", "POST /v1/chat HTTP/1.1\r\nhost: API.Example.com\r\ncontent-length: 0\r\n\r\n", ok("POST", "/v1/chat", "API.Example.com", "", "HTTP/1.1")},
		{"shouty header name, OWS around value", "GET / HTTP/1.1\r\nHOST: \t example.com \t\r\n\r\n", ok("GET", "/", "example.com", "", "HTTP/1.1")},
		{"absolute form with port and matching Host", "GET http://example.com:81/x?y HTTP/1.1\r\nHost: EXAMPLE.com:81\r\n\r\n", ok("GET", "http://example.com:81/x?y", "example.com", "81", "HTTP/1.1")},
		{"absolute form, query right after authority", "GET https://example.com?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n", ok("GET", "https://example.com?q=1", "example.com", "", "HTTP/1.1")},
		{"HTTP/1.0 without Host", "GET / HTTP/1.0\r\nUser-Agent: x\r\n\r\n", ok("GET", "/", "", "", "HTTP/1.0")},
		{"empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", ok("GET", "/", "", "", "HTTP/1.1")},
		{"trailing dot kept", "GET / HTTP/1.1\r\nHost: example.com.\r\n\r\n", ok("GET", "/", "example.com.", "", "HTTP/1.1")},
		{"empty port", "GET / HTTP/1.1\r\nHost: example.com:\r\n\r\n", ok("GET", "/", "example.com", "", "HTTP/1.1")},
		{"connect without Host", "CONNECT db.example.com:5432 HTTP/1.1\r\n\r\n", ok("CONNECT", "db.example.com:5432", "db.example.com", "5432", "HTTP/1.1")},
		{"options asterisk", "OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n", ok("OPTIONS", "*", "example.com", "", "HTTP/1.1")},
		{"webdav", "PROPFIND /dav/ HTTP/1.1\r\nHost: dav.example.com\r\nDepth: 1\r\n\r\n", ok("PROPFIND", "/dav/", "dav.example.com", "", "HTTP/1.1")},
		{"obs-text in another header", "GET / HTTP/1.1\r\nHost: a.example\r\nX-Name: caf\xc3\xa9\r\n\r\n", ok("GET", "/", "a.example", "", "HTTP/1.1")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, chunk := range []int{1 << 20, 1} {
				got, err := Sniff(&chunkConn{data: []byte(tt.head), chunk: chunk}, Options{})
				checkSniff(t, got, err, tt.want)
				if string(got.Prefix) != tt.head {
					t.Errorf("Prefix %q, want %q", got.Prefix, tt.head)
				}
			}
		})
	}
}

func TestSniffHTTPMalformed(t *testing.T) {
	tests := []struct {
		name, head, why string
	}{
		{"two Host headers", "GET / HTTP/1.1\r\nHost: a.example\r\nhost: b.example\r\n\r\n", "http request has two Host headers"},
		{"space in Host", "GET / HTTP/1.1\r\nHost: a.example b.example\r\n\r\n", `http Host header "a.example b.example" is not host[:port]`},
		{"control character in Host", "GET / HTTP/1.1\r\nHost: a.example\x01\r\n\r\n", `http header "Host" has a control character`},
		{"missing Host in HTTP/1.1", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", "HTTP/1.1 request without Host"},
		{"missing Host with absolute form", "GET http://a.example/ HTTP/1.1\r\n\r\n", "HTTP/1.1 request without Host"},
		{"whitespace before colon", "GET / HTTP/1.1\r\nHost : a.example\r\n\r\n", `http header name "Host " is not a token`},
		{"line folding", "GET / HTTP/1.1\r\nX-A: 1\r\n Host: a.example\r\n\r\n", "http header line folding"},
		{"header without name", "GET / HTTP/1.1\r\n: x\r\nHost: a\r\n\r\n", "http header line without a name"},
		{"header without colon", "GET / HTTP/1.1\r\nHost a.example\r\n\r\n", "http header line without a name"},
		{"bare LF ends the request line", "GET / HTTP/1.1\nHost: a.example\n\n", "bare LF in http head"},
		{"bare LF in a header", "GET / HTTP/1.1\r\nHost: a.example\n\r\n", "bare LF in http head"},
		{"bare CR in a header", "GET / HTTP/1.1\r\nHost: a\rexample\r\n\r\n", `http header "Host" has a control character`},
		{"HTTP/0.9", "GET /\r\n", "http request line malformed"},
		{"HTTP/2.0 request line", "GET / HTTP/2.0\r\n", `http version "HTTP/2.0" not supported`},
		{"lowercase version", "GET / http/1.1\r\n", `http version "http/1.1" not supported`},
		{"double space", "GET  / HTTP/1.1\r\n", "http request line malformed"},
		{"non-ASCII target", "GET /caf\xc3\xa9 HTTP/1.1\r\n", "http request target has a space, control or non-ASCII byte"},
		{"Host disagrees with target", "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n", "http Host header disagrees with the request target"},
		{"userinfo in target", "GET http://a.example@b.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n", "http request target has userinfo"},
		{"relative target", "GET index.html HTTP/1.1\r\nHost: a\r\n\r\n", "http request target is neither a path nor an absolute URI"},
		{"absolute form without authority", "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", "http absolute request target without authority"},
		{"asterisk outside OPTIONS", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", "http request target * outside OPTIONS"},
		{"connect without port", "CONNECT a.example HTTP/1.1\r\nHost: a.example\r\n\r\n", `http request target authority "a.example" is not host[:port]`},
		{"port out of range", "GET / HTTP/1.1\r\nHost: a.example:65536\r\n\r\n", `http Host header "a.example:65536" is not host[:port]`},
		{"port not a number", "GET / HTTP/1.1\r\nHost: a.example:http\r\n\r\n", `http Host header "a.example:http" is not host[:port]`},
		{"unbracketed ipv6", "GET / HTTP/1.1\r\nHost: ::1\r\n\r\n", `http Host header "::1" is not host[:port]`},
		{"bracketed ipv4", "GET / HTTP/1.1\r\nHost: [127.0.0.1]\r\n\r\n", `http Host header "[127.0.0.1]" is not host[:port]`},
		{"ipv6 zone", "GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n", `http Host header "[fe80::1%25eth0]" is not host[:port]`},
		{"percent-encoded host", "GET http://ex%61mple.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", `http request target authority "ex%61mple.com" is not host[:port]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, chunk := range []int{1 << 20, 1} {
				got, err := Sniff(&chunkConn{data: []byte(tt.head), chunk: chunk}, Options{Deadline: long})
				checkSniff(t, got, err, Sniffed{Protocol: ProtocolHTTP, Stop: StopMalformed, Malformed: tt.why})
				if !bytes.HasPrefix([]byte(tt.head), got.Prefix) || len(got.Prefix) == 0 {
					t.Errorf("Prefix %q is not a prefix of what was sent", got.Prefix)
				}
			}
		})
	}
}

func TestSniffHTTPStopsAtHead(t *testing.T) {
	// A body in the same segment is in Prefix; more body is not waited for.
	wire := []byte("POST /upload HTTP/1.1\r\nHost: up.example\r\nContent-Length: 100\r\n\r\nfirst part")
	got, err := Sniff(feedPipe(t, [][]byte{wire, []byte("never read")}, false), Options{Deadline: long})
	checkSniff(t, got, err, Sniffed{Protocol: ProtocolHTTP, Stop: StopComplete, Method: "POST", Path: "/upload", Host: "up.example", HTTPVersion: "HTTP/1.1"})
	if !bytes.Equal(got.Prefix, wire) {
		t.Errorf("Prefix %q, want %q", got.Prefix, wire)
	}
}

func TestSniffHTTPIncompleteAndLimit(t *testing.T) {
	head := "GET /slow HTTP/1.1\r\nHost: slow.example\r\n"
	t.Run("stall before the blank line", func(t *testing.T) {
		cli, srv := tcpPair(t)
		if _, err := io.WriteString(cli, head); err != nil {
			t.Fatal(err)
		}
		got, err := Sniff(srv, Options{Deadline: 100 * time.Millisecond})
		checkSniff(t, got, err, Sniffed{Protocol: ProtocolHTTP, Stop: StopTimeout})
		if string(got.Prefix) != head {
			t.Errorf("Prefix %q, want %q", got.Prefix, head)
		}
	})
	t.Run("close before the blank line", func(t *testing.T) {
		got, err := Sniff(feedPipe(t, [][]byte{[]byte(head)}, true), Options{Deadline: long})
		checkSniff(t, got, err, Sniffed{Protocol: ProtocolHTTP, Stop: StopEOF})
		if string(got.Prefix) != head {
			t.Errorf("Prefix %q, want %q", got.Prefix, head)
		}
	})
	t.Run("head over the bound", func(t *testing.T) {
		big := head + "X-Pad: " + strings.Repeat("p", 20000) + "\r\n\r\n"
		got, err := Sniff(feedPipe(t, splitBytes([]byte(big), 1000), false), Options{Deadline: long})
		checkSniff(t, got, err, Sniffed{Protocol: ProtocolHTTP, Stop: StopLimit})
		if len(got.Prefix) != DefaultMaxBytes || string(got.Prefix) != big[:DefaultMaxBytes] {
			t.Errorf("Prefix has %d bytes, want the first %d sent", len(got.Prefix), DefaultMaxBytes)
		}
	})
}

// ---- h2c, opaque, nothing ----

func TestSniffH2C(t *testing.T) {
	settings := []byte{0, 0, 0, 4, 0, 0, 0, 0, 0}
	wire := append([]byte(h2Preface), settings...)
	got, err := Sniff(&chunkConn{data: wire, chunk: 3}, Options{})
	checkSniff(t, got, err, Sniffed{Protocol: ProtocolH2C, Stop: StopComplete})
	if string(got.Prefix) != h2Preface {
		t.Errorf("Prefix %q, want the preface alone (3-byte reads end on it)", got.Prefix)
	}
	got, err = Sniff(&chunkConn{data: []byte("PRI * HTTP/1.1\r\n\r\n"), chunk: 64}, Options{})
	checkSniff(t, got, err, Sniffed{Protocol: ProtocolH2C, Stop: StopMalformed, Malformed: "bad HTTP/2 connection preface"})
	got, err = Sniff(&chunkConn{data: []byte(h2Preface[:10]), chunk: 1}, Options{})
	checkSniff(t, got, err, Sniffed{Protocol: ProtocolH2C, Stop: StopEOF})
	got, err = Sniff(&chunkConn{data: []byte("PR"), chunk: 1}, Options{})
	checkSniff(t, got, err, Sniffed{Protocol: ProtocolOpaque, Stop: StopEOF})
}

func TestSniffOpaque(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		close  bool
		want   Sniffed
		prefix string
	}{
		{"ssh banner, connection kept open", []string{"SSH-2.0-OpenSSH_9.6\r\n"}, false, Sniffed{Protocol: ProtocolOpaque, Stop: StopComplete}, "SSH-2.0-OpenSSH_9.6\r\n"},
		{"binary", []string{"\x00\x00\x00\x08\x04\xd2\x16\x2f"}, false, Sniffed{Protocol: ProtocolOpaque, Stop: StopComplete}, "\x00\x00\x00\x08\x04\xd2\x16\x2f"},
		{"lowercase method is not HTTP", []string{"get / HTTP/1.1\r\n"}, false, Sniffed{Protocol: ProtocolOpaque, Stop: StopComplete}, "get / HTTP/1.1\r\n"},
		{"decided on the second read", []string{"G", "X"}, false, Sniffed{Protocol: ProtocolOpaque, Stop: StopComplete}, "GX"},
		{"method prefix, then close", []string{"PO"}, true, Sniffed{Protocol: ProtocolOpaque, Stop: StopEOF}, "PO"},
		{"method without space", []string{"GETX"}, false, Sniffed{Protocol: ProtocolOpaque, Stop: StopComplete}, "GETX"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var chunks [][]byte
			for _, c := range tt.chunks {
				chunks = append(chunks, []byte(c))
			}
			got, err := Sniff(feedPipe(t, chunks, tt.close), Options{Deadline: long})
			checkSniff(t, got, err, tt.want)
			if string(got.Prefix) != tt.prefix {
				t.Errorf("Prefix %q, want %q", got.Prefix, tt.prefix)
			}
		})
	}
}

func TestSniffNoData(t *testing.T) {
	t.Run("silent until the deadline", func(t *testing.T) {
		cli, srv := tcpPair(t)
		got, err := Sniff(srv, Options{Deadline: 20 * time.Millisecond})
		checkSniff(t, got, err, Sniffed{Protocol: ProtocolNone, Stop: StopTimeout})
		if len(got.Prefix) != 0 {
			t.Errorf("Prefix %q, want empty", got.Prefix)
		}
		// The deadline, long past, must be gone: the proxy reads on.
		if _, err := cli.Write([]byte("late")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(srv, buf); err != nil {
			t.Fatalf("read after Sniff: %v (deadline left set?)", err)
		}
	})
	t.Run("closed before a byte", func(t *testing.T) {
		got, err := Sniff(feedPipe(t, nil, true), Options{Deadline: long})
		checkSniff(t, got, err, Sniffed{Protocol: ProtocolNone, Stop: StopEOF})
	})
}

func TestSniffDeadlineCleared(t *testing.T) {
	for _, data := range []string{"", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "\x16\x03\x01\x00"} {
		c := &chunkConn{data: []byte(data), chunk: 2}
		if _, err := Sniff(c, Options{}); err != nil {
			t.Fatal(err)
		}
		if c.setCount != 2 || !c.deadline.IsZero() {
			t.Errorf("%q: deadline set %d times, last %v; want set then cleared", data, c.setCount, c.deadline)
		}
	}
}

func TestSniffReadError(t *testing.T) {
	reset := errors.New("connection reset by peer")
	c := &chunkConn{data: []byte("GET / HT"), chunk: 4, end: reset}
	got, err := Sniff(c, Options{})
	if !errors.Is(err, reset) || !strings.HasPrefix(err.Error(), "read client: ") {
		t.Fatalf("err = %v, want read client: %v", err, reset)
	}
	if got.Protocol != ProtocolHTTP || got.Stop != StopError || string(got.Prefix) != "GET / HT" {
		t.Errorf("Sniff = %+v, want http, error, with the bytes read", got)
	}
	// A timeout that is not os.ErrDeadlineExceeded is still a timeout.
	c = &chunkConn{data: []byte("\x16"), chunk: 4, end: timeoutErr{}}
	if got, err := Sniff(c, Options{}); err != nil || got.Stop != StopTimeout || got.Protocol != ProtocolTLS {
		t.Errorf("Sniff = %+v, %v; want tls, timeout", got, err)
	}
	if !IsTimeout(os.ErrDeadlineExceeded) {
		t.Error("os.ErrDeadlineExceeded is not a timeout")
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// ---- benchmarks ----

func benchmarkSniff(b *testing.B, wire []byte, check func(Sniffed) bool) {
	b.ReportAllocs()
	b.SetBytes(int64(len(wire)))
	c := &chunkConn{data: wire, chunk: 1 << 20}
	for b.Loop() {
		c.pos = 0
		s, err := Sniff(c, Options{})
		if err != nil || !check(s) {
			b.Fatalf("Sniff = %+v, %v", sniffFields(s), err)
		}
	}
}

// BenchmarkSniffTLS sniffs a real crypto/tls ClientHello (SNI, ALPN h2 and
// http/1.1, hybrid post-quantum key share) from an in-memory conn, so the
// figures are Sniff's own.
func BenchmarkSniffTLS(b *testing.B) {
	hello := captureClientHello(b, &tls.Config{ServerName: "api.example.com", NextProtos: []string{"h2", "http/1.1"}})
	benchmarkSniff(b, hello, func(s Sniffed) bool { return s.Stop == StopComplete && s.SNI == "api.example.com" })
}

// BenchmarkSniffHTTP sniffs a typical API request head.
func BenchmarkSniffHTTP(b *testing.B) {
	head := []byte("POST /v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: agent/1.0\r\n" +
		"Authorization: Bearer xxxxxxxxxxxxxxxxxxxxxxxx\r\nContent-Type: application/json\r\nContent-Length: 512\r\n" +
		"Accept: */*\r\nAccept-Encoding: gzip\r\n\r\n")
	benchmarkSniff(b, head, func(s Sniffed) bool { return s.Stop == StopComplete && s.Host == "api.example.com" })
}

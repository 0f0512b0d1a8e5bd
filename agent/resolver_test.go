package agent

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// countingDNS answers A queries for api.example.test with 192.0.2.10 on a
// loopback UDP socket and counts the queries.
func countingDNS(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var n atomic.Int64
	answerDNS(pc, false, func(q dnsmessage.Question) ([4]byte, bool) {
		if q.Type != dnsmessage.TypeA {
			return [4]byte{}, false
		}
		n.Add(1)
		return [4]byte{192, 0, 2, 10}, q.Name.String() == "api.example.test."
	})
	return pc.LocalAddr().String(), &n
}

func TestResolverOwnsCachesAnswers(t *testing.T) {
	addr, queries := countingDNS(t)
	r := newResolver(map[string][]netip.Addr{"Static.Test.": {netip.MustParseAddr("127.0.0.5")}})
	r.dns = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	ctx := context.Background()

	// Static answers: case and trailing dot folded, no DNS.
	if ok, err := r.Owns(ctx, "static.test", netip.MustParseAddr("127.0.0.5")); !ok || err != nil {
		t.Fatalf("static owns = %v, %v", ok, err)
	}
	if ok, _ := r.Owns(ctx, "static.test", netip.MustParseAddr("127.0.0.6")); ok {
		t.Fatal("static name owns an address it does not list")
	}
	// DNS answers, v4-mapped addresses compared unmapped.
	if ok, err := r.Owns(ctx, "api.example.test", netip.MustParseAddr("::ffff:192.0.2.10")); !ok || err != nil {
		t.Fatalf("dns owns = %v, %v", ok, err)
	}
	if ok, _ := r.Owns(ctx, "api.example.test", netip.MustParseAddr("192.0.2.11")); ok {
		t.Fatal("name owns an address DNS did not give")
	}
	if q := queries.Load(); q != 1 {
		t.Fatalf("%d A queries within the TTL, want 1 (cached)", q)
	}
	now = now.Add(cacheTTL + time.Second)
	r.Owns(ctx, "api.example.test", netip.MustParseAddr("192.0.2.10"))
	if q := queries.Load(); q != 2 {
		t.Fatalf("%d A queries after the TTL, want 2", q)
	}
	// A name with no answer is an error, and not cached.
	if _, err := r.Owns(ctx, "missing.example.test", netip.MustParseAddr("192.0.2.10")); err == nil {
		t.Fatal("unresolvable name: no error")
	}
}

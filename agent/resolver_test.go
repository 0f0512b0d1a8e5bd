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
	if ok, err := r.Owns(ctx, 0, "static.test", netip.MustParseAddr("127.0.0.5")); !ok || err != nil {
		t.Fatalf("static owns = %v, %v", ok, err)
	}
	if ok, _ := r.Owns(ctx, 0, "static.test", netip.MustParseAddr("127.0.0.6")); ok {
		t.Fatal("static name owns an address it does not list")
	}
	// DNS answers, v4-mapped addresses compared unmapped.
	if ok, err := r.Owns(ctx, 0, "api.example.test", netip.MustParseAddr("::ffff:192.0.2.10")); !ok || err != nil {
		t.Fatalf("dns owns = %v, %v", ok, err)
	}
	if ok, _ := r.Owns(ctx, 0, "api.example.test", netip.MustParseAddr("192.0.2.11")); ok {
		t.Fatal("name owns an address DNS did not give")
	}
	if q := queries.Load(); q != 1 {
		t.Fatalf("%d A queries within the TTL, want 1 (cached)", q)
	}
	now = now.Add(cacheTTL + time.Second)
	r.Owns(ctx, 0, "api.example.test", netip.MustParseAddr("192.0.2.10"))
	if q := queries.Load(); q != 2 {
		t.Fatalf("%d A queries after the TTL, want 2", q)
	}
	// A name with no answer is an error, and not cached.
	if _, err := r.Owns(ctx, 0, "missing.example.test", netip.MustParseAddr("192.0.2.10")); err == nil {
		t.Fatal("unresolvable name: no error")
	}
}

// toldTable is a DNS proxy's memory as a table: workload → name → addresses.
type toldTable map[uint32]map[string][]netip.Addr

func (t toldTable) Told(w uint32, name string, addr netip.Addr) (bool, bool) {
	as, ok := t[w][name]
	if !ok {
		return false, false
	}
	for _, a := range as {
		if a == addr.Unmap() {
			return true, true
		}
	}
	return false, true
}

// TestResolverOwnsToldFirst: a name the workload resolved through the DNS
// proxy owns exactly the addresses it was told, without the agent asking
// DNS (whose answer, as for a CDN, differs); another workload's told
// addresses prove nothing for this one; static hosts still answer first.
func TestResolverOwnsToldFirst(t *testing.T) {
	addr, queries := countingDNS(t) // answers 192.0.2.10 for api.example.test
	r := newResolver(map[string][]netip.Addr{"static.test": {netip.MustParseAddr("127.0.0.5")}})
	r.dns = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
	told := netip.MustParseAddr("198.51.100.7")
	r.told = toldTable{1: {"api.example.test": {told}, "static.test": {told}}}
	ctx := context.Background()
	if ok, err := r.Owns(ctx, 1, "api.example.test", told); !ok || err != nil {
		t.Fatalf("told address: owns = %v, %v", ok, err)
	}
	if ok, _ := r.Owns(ctx, 1, "api.example.test", netip.MustParseAddr("192.0.2.10")); ok {
		t.Fatal("an address the workload was not told is owned (the agent resolved again)")
	}
	if q := queries.Load(); q != 0 {
		t.Fatalf("%d agent lookups for a name the workload was told, want 0", q)
	}
	// Workload 2 was told nothing: the agent's own lookup is the fallback.
	if ok, _ := r.Owns(ctx, 2, "api.example.test", told); ok {
		t.Fatal("another workload's told address is owned")
	}
	if ok, err := r.Owns(ctx, 2, "api.example.test", netip.MustParseAddr("192.0.2.10")); !ok || err != nil {
		t.Fatalf("fallback lookup: owns = %v, %v", ok, err)
	}
	if ok, _ := r.Owns(ctx, 1, "static.test", told); ok {
		t.Fatal("static hosts are not the first answer")
	}
}

package receipts

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"net/netip"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/kernel"
)

// An egress receipt reaches the log without being canonicalized or scanned
// again: the workload and host it is indexed under come typed from the
// event. They must be what a reader finds in the JSON (indexedString over
// the stored bytes, as Append of the same bytes indexes them), and the
// stored bytes what CanonicalJSON gives.
func TestPreparedEgressIndexMatchesJSON(t *testing.T) {
	key := testKey("prepared-index")
	pub := key.Public().(ed25519.PublicKey)
	l, _ := openTest(t, Options{Key: key})
	base := kernel.EgressEvent{
		IP: netip.MustParseAddr("203.0.113.7"), Port: 443, Transport: kernel.TransportTCP,
		SNI:      "api.example.com",
		Workload: kernel.WorkloadIdentity{Name: "agents/a", Labels: map[string]string{"name": "not-this"}},
	}
	http := base
	http.SNI, http.HTTPHost = "", "h.example:8080"
	named := base
	named.SNI, named.Host = "", "db.internal"
	ip := base
	ip.SNI = ""
	sock := ip
	sock.IP, sock.Port, sock.Transport = netip.Addr{}, 0, "ip-255"
	sock.Socket = &kernel.SocketCall{Family: "inet", Type: "raw", Protocol: 255}
	odd := base
	odd.SNI, odd.Workload.Name = "caf\u00e9.example", "w\"\\\u007f"
	out := kernel.Outcome{Verdict: kernel.VerdictAllow}
	for i, ev := range []kernel.EgressEvent{base, http, named, ip, sock, odd} {
		p, err := kernel.PrepareEgressReceipt(ev, out, "ph", pub, fixedNow.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		ix, ok := p.Index()
		if !ok {
			t.Fatalf("event %d: egress receipt carries no index", i)
		}
		r, err := l.signedRequest(p)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := p.Sign(key)
		if err != nil {
			t.Fatal(err)
		}
		want, err := rc.CanonicalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.entry.Receipt, want) {
			t.Errorf("event %d: stored bytes\n%s\nCanonicalJSON\n%s", i, r.entry.Receipt, want)
		}
		parsed, _, err := parseEntry(want)
		if err != nil {
			t.Fatal(err)
		}
		if ix.Workload != parsed.Workload || ix.Host != parsed.Host ||
			r.entry.Workload != parsed.Workload || r.entry.Host != parsed.Host {
			t.Errorf("event %d: typed index %+v, request %q/%q, read from the JSON %q/%q", i, ix,
				r.entry.Workload, r.entry.Host, parsed.Workload, parsed.Host)
		}
		if r.leaf != LeafHash(want) {
			t.Errorf("event %d: leaf hash differs", i)
		}
		if _, err := l.AppendPrepared(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		got, err := l.Lookup(p.ID())
		if err != nil || got.Workload != parsed.Workload || got.Host != parsed.Host {
			t.Errorf("event %d: stored %+v, %v", i, got, err)
		}
	}
}

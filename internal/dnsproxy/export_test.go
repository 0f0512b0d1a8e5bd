package dnsproxy

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/receipts"
)

// TestDNSReceiptsVerifyWithPython writes the receipts of DNS decisions
// (answered, blocked, garbage, a refused chain, an aggregated flood) into a
// receipt log and checks its export with scripts/verify_export.py, which
// also checks what DNS receipts claim: a receipt signed by the right key
// whose refused query still lists answers is refused.
func TestDNSReceiptsVerifyWithPython(t *testing.T) {
	py := testutil.PythonCrypto(t)
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, "127.0.0.1", func(o *Options) { o.Rate, o.Burst = 1, 6 })
	h.ask(t, 1, "api.allowed.test.", dns.TypeA, "udp")
	h.ask(t, 1, "api.allowed.test.", dns.TypeAAAA, "tcp")
	h.ask(t, 1, "secret.attacker.test.", dns.TypeTXT, "udp")
	h.ask(t, 1, "chain.allowed.test.", dns.TypeA, "udp")
	h.p.Answer(context.Background(), Query{Workload: 1, Msg: []byte("not dns"), Transport: "tcp"})
	for range 10 {
		h.ask(t, 1, "api.allowed.test.", dns.TypeA, "udp")
	}
	h.p.Flush(context.Background())

	export := func(rs []kernel.Receipt) string {
		l, err := receipts.Open(filepath.Join(t.TempDir(), "r.db"), receipts.Options{Key: h.key})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		for i := range rs {
			if _, err := l.AppendReceipt(context.Background(), &rs[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Flush(context.Background(), true); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := l.Export(context.Background(), &buf); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "export.jsonl")
		if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		out, _ := exec.Command(py, filepath.Join(root, "scripts", "verify_export.py"), "--key", l.KernelKey(), p).CombinedOutput()
		return string(out)
	}
	var kinds []string
	for _, r := range h.receipts {
		kinds = append(kinds, r.Decision.Verdict+"/"+r.Decision.Guard)
	}
	if out := export(h.receipts); !strings.HasPrefix(out, "ok: ") {
		t.Fatalf("verifier on DNS receipts (%v): %s", kinds, out)
	}
	if !strings.Contains(strings.Join(kinds, " "), "deny/"+kernel.GuardLimit) {
		t.Fatalf("no aggregated flood receipt among %v", kinds)
	}

	// A receipt that says a query was refused and yet lists what the
	// workload was told, properly signed: the signature holds, the claim
	// does not.
	forged := h.receipts[0]
	forged.ID, forged.Signature, forged.Action.ParameterHash = "", "", ""
	forged.Decision = &kernel.Decision{Verdict: kernel.VerdictDeny, Guard: kernel.GuardEgressPolicy}
	forged.Evidence = []kernel.Evidence{{GuardName: kernel.GuardEgressPolicy, Verdict: false}}
	p, err := kernel.Prepare(forged, h.key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	signed, err := p.Sign(h.key)
	if err != nil {
		t.Fatal(err)
	}
	if out := export([]kernel.Receipt{h.receipts[1], signed}); !strings.Contains(out, "a refused query with answers") || !strings.Contains(out, "seq 2") {
		t.Fatalf("verifier missed a refused query with answers: %s", out)
	}
}

package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/policysource"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// TestHTTPPolicyPin: an http(s) policy source takes the same #sha256: pin
// as a store source. The pinned bytes load; other bytes served under the
// same URL (a compromised or swapped server) are refused, naming the sum
// they have; a fragment that is not a pin is refused before any fetch.
func TestHTTPPolicyPin(t *testing.T) {
	const good = "hushspec: \"0.1.0\"\nname: pinned\nrules:\n  egress:\n    allow: [api.example.test]\n    default: block\n"
	const other = "hushspec: \"0.1.0\"\nname: swapped\nrules:\n  egress:\n    allow: [\"*\"]\n    default: allow\n"
	body := good
	fetched := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetched++
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	sum := sha256.Sum256([]byte(good))
	pinned := srv.URL + "/policy.yaml#sha256:" + hex.EncodeToString(sum[:])

	p, err := LoadPolicy(t.Context(), pinned, "")
	if err != nil {
		t.Fatalf("load pinned policy: %v", err)
	}
	if d := p.Evaluate(hushspec.Action{Type: "egress", Target: "api.example.test"}).Decision; d != hushspec.DecisionAllow {
		t.Fatalf("pinned policy decides api.example.test %s; want allow", d)
	}
	if d := p.Evaluate(hushspec.Action{Type: "egress", Target: "evil.example.test"}).Decision; d == hushspec.DecisionAllow {
		t.Fatalf("pinned policy allows evil.example.test")
	}

	body = other
	_, err = LoadPolicy(t.Context(), pinned, "")
	otherSum := sha256.Sum256([]byte(other))
	if !errors.Is(err, policysource.ErrPinMismatch) || !strings.Contains(err.Error(), hex.EncodeToString(otherSum[:])) {
		t.Fatalf("load swapped content under a pin: %v; want %v naming sha256 %x", err, policysource.ErrPinMismatch, otherSum)
	}

	before := fetched
	for _, frag := range []string{"#sha256:abc", "#md5:" + strings.Repeat("0", 32), "#section", "#sha256:" + strings.Repeat("g", 64)} {
		if _, err := LoadPolicy(t.Context(), srv.URL+"/policy.yaml"+frag, ""); err == nil || !strings.Contains(err.Error(), "the only fragment is a pin") {
			t.Errorf("fragment %s: %v; want a refusal naming the pin form", frag, err)
		}
	}
	if fetched != before {
		t.Errorf("a malformed pin was fetched %d times; want it refused before the fetch", fetched-before)
	}
}

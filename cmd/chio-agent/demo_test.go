package main

import (
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// The README's first command runs this demo; it must keep working for real.
func TestDemoEndToEnd(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "curl", "python3")
	out, err := run(t, "demo", "--dir", t.TempDir())
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"chio: ALLOW curl[",
		"→ hello from the allowed API",
		"tlsv1 alert access denied",
		`403 {"error":"chio_access_denied"`,
		"ChioAgentAntiSpoofGuard: destination 127.0.0.2 is not an address of api.allowed.test",
		"refused: [Errno 1] Operation not permitted",
		"the receipt log verifies: 5 receipts",
		"demo done",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "FORBIDDEN API") {
		t.Errorf("a client reached the forbidden API:\n%s", out)
	}
}

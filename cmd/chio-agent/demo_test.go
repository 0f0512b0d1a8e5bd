package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// The README's first command runs this demo; it must keep working for real.
func TestDemoShowsRedirectForwardAndFailClosed(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("curl"); err != nil {
		testutil.Skip(t, "demo needs curl")
	}
	out, err := run(t, "demo")
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"agent: intercepted curl (pid ",
		"curl printed: hello from the local API",
		"curl failed: ",
		"demo done",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "agent: intercepted"); n != 1 {
		t.Errorf("demo intercepted %d connections, want exactly 1 (the protected curl):\n%s", n, out)
	}
}

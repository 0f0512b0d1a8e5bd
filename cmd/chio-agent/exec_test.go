package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
)

// TestExecProtectsUnmodifiedCommands runs the real binary as a user would:
// `chio-agent exec --policy … -- curl …`, with a policy written from the
// HushSpec docs.
func TestExecProtectsUnmodifiedCommands(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "curl")
	bin := binary(t)
	dir := t.TempDir()
	port := serveBody(t, "hello from upstream")

	key := filepath.Join(dir, "chio.key")
	if _, err := kernel.GenerateKeyFile(key); err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.yaml")
	os.WriteFile(policy, []byte(`hushspec: "0.1.0"
name: exec-test
rules:
  egress:
    allow: ["127.0.0.1"]
    default: block
`), 0o644)
	db := filepath.Join(dir, "receipts.db")
	execCmd := func(args ...string) (string, string, int) {
		t.Helper()
		return runBinary(t, bin, append([]string{"exec", "--policy", policy, "--key", key, "--receipts", db, "--"}, args...)...)
	}

	out, errOut, code := execCmd("curl", "-sS", fmt.Sprintf("http://127.0.0.1:%d/", port))
	if code != 0 || out != "hello from upstream" || !strings.Contains(errOut, "chio: ALLOW curl[") || !strings.Contains(errOut, "rules.egress.allow") {
		t.Fatalf("allowed: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// A denied name: curl -f turns the 403 into its exit status 22, which
	// exec passes on.
	out, errOut, code = execCmd("curl", "-sS", "-f", "--resolve", fmt.Sprintf("blocked.test:%d:127.0.0.1", port), fmt.Sprintf("http://blocked.test:%d/", port))
	if code != 22 || !strings.Contains(errOut, "chio: DENY  curl[") || !strings.Contains(errOut, "rules.egress.default") {
		t.Fatalf("denied: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// The command's own exit status comes back.
	if _, errOut, code = execCmd("sh", "-c", "exit 3"); code != 3 {
		t.Fatalf("exit status: %d, stderr %q; want 3", code, errOut)
	}
	// No key: refused with a clear error, nothing run.
	cmd := exec.Command(bin, "exec", "--policy", policy, "--receipts", filepath.Join(dir, "other.db"), "--", "true")
	cmd.Env = append(os.Environ(), "CHIO_SIGNING_KEY=")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "chio-agent keygen") {
		t.Fatalf("without a key: %v, %q; want a refusal naming keygen", err, out)
	}
	if out, err := exec.Command(bin, "receipts", "verify", "--receipts", db).CombinedOutput(); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
}

// runBinary runs the chio-agent binary with args and returns its stdout,
// stderr and exit status.
func runBinary(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := testutil.ExitCode(t, cmd.Run())
	return stdout.String(), stderr.String(), code
}

package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
)

// TestExecPortFlags: `exec --egress-allow-ports` refuses an allowed address
// on another port, and `--inbound-allow-ports` is the only port the command
// can bind.
func TestExecPortFlags(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "curl", "python3")
	bin := binary(t)
	dir := t.TempDir()
	p := serveBody(t, "port-p")
	q := serveBody(t, "port-q")
	key := filepath.Join(dir, "chio.key")
	if _, err := kernel.GenerateKeyFile(key); err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.yaml")
	os.WriteFile(policy, []byte("hushspec: \"0.1.0\"\nname: ports\nrules:\n  egress:\n    allow: [\"127.0.0.1\"]\n    default: block\n"), 0o644)
	db := filepath.Join(dir, "receipts.db")
	run := func(flags []string, args ...string) (string, string, int) {
		t.Helper()
		all := append([]string{"exec", "--policy", policy, "--key", key, "--receipts", db}, flags...)
		return runBinary(t, bin, append(append(all, "--"), args...)...)
	}

	egress := []string{"--egress-allow-ports", fmt.Sprint(p)}
	out, errOut, code := run(egress, "curl", "-sS", "-f", fmt.Sprintf("http://127.0.0.1:%d/", q))
	if code != 22 || strings.Contains(out, "port-q") || !strings.Contains(errOut, "ChioAgentPortGuard") {
		t.Fatalf("allowed address on port %d: exit %d, stdout %q, stderr %q; want refused by the port guard", q, code, out, errOut)
	}
	if out, errOut, code := run(egress, "curl", "-sS", "-f", fmt.Sprintf("http://127.0.0.1:%d/", p)); code != 0 || out != "port-p" {
		t.Fatalf("allowed port %d: exit %d, stdout %q, stderr %q", p, code, out, errOut)
	}

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	bind := fmt.Sprintf("import socket; s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen(1); print('listening')", free)
	if out, errOut, code := run(nil, "python3", "-c", bind); code == 0 || !strings.Contains(errOut, "PermissionError") {
		// (The refusal's receipt is checked by the agent's tests: exec may
		// exit before it reads the event of a command's last act.)
		t.Fatalf("bind without --inbound-allow-ports: exit %d, stdout %q, stderr %q; want EPERM", code, out, errOut)
	}
	if out, errOut, code := run([]string{"--inbound-allow-ports", fmt.Sprint(free)}, "python3", "-c", bind); code != 0 || out != "listening\n" {
		t.Fatalf("bind with --inbound-allow-ports %d: exit %d, stdout %q, stderr %q", free, code, out, errOut)
	}
	if _, errOut, code := run([]string{"--egress-allow-ports", "0"}, "true"); code == 0 || !strings.Contains(errOut, "not a port") {
		t.Fatalf("--egress-allow-ports 0: exit %d, stderr %q; want refused", code, errOut)
	}
	if out, err := exec.Command(bin, "receipts", "verify", "--receipts", db).CombinedOutput(); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
}

package main

import (
	"crypto/ed25519"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
)

// TestKeysRotateToCentralStore: a node's log handed to a new key with
// keys rotate, then written on by the new key, exports a package that the
// python verifier checks and a central store imports and verifies across
// the rotation. Rotating needs the previous key or an explicit
// --local-only.
func TestKeysRotateToCentralStore(t *testing.T) {
	db, oldKey, oldPub := nodeLog(t, "rot-old", "25")
	newKeyFile := filepath.Join(t.TempDir(), "new.key")
	newKey, err := kernel.GenerateKeyFile(newKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	newPub := kernel.PublicKeyHex(newKey.Public().(ed25519.PublicKey))

	if _, err := runCLI(t, "keys", "rotate", "--receipts", db, "--key", newKeyFile); exitCode(err) != exitUsage {
		t.Fatalf("rotate with neither --previous-key nor --local-only: %v", err)
	}
	out, err := runCLI(t, "keys", "rotate", "--receipts", db, "--key", newKeyFile, "--previous-key", oldKey)
	if err != nil || !strings.Contains(out, "statement: "+oldPub+" -> "+newPub+" from seq 26") {
		t.Fatalf("keys rotate: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "keys", "rotate", "--receipts", db, "--key", newKeyFile, "--previous-key", oldKey); err != nil || !strings.Contains(out, "nothing to do") {
		t.Fatalf("keys rotate again: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "receipts", "bench", "--receipts", db, "--count", "15", "--writers", "1", "--key", newKeyFile, "--checkpoint-every", "10"); err != nil {
		t.Fatalf("bench with the new key: %v\n%s", err, out)
	}
	pkg := filepath.Join(t.TempDir(), "pkg")
	if out, err := runCLI(t, "receipts", "export", "--receipts", db, "--key", newKeyFile, "--package", pkg); err != nil {
		t.Fatalf("export --package: %v\n%s", err, out)
	}
	py := testutil.PythonCrypto(t)
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(py, filepath.Join(root, "scripts", "verify_export.py"), "--key", oldPub, pkg).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "40 receipts") {
		t.Fatalf("python verifier on the rotated log's package: %v\n%s", err, out)
	}
	store := filepath.Join(t.TempDir(), "central.db")
	if out, err := runCLI(t, "receipts", "import", pkg, "--receipts", store, "--trusted-key", newPub); err == nil {
		t.Fatalf("import trusting only the new key passed:\n%s", out)
	}
	if out, err := runCLI(t, "receipts", "import", pkg, "--receipts", store, "--trusted-key", oldPub, "--trusted-key", newPub); err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "receipts", "verify", "--receipts", store, "--trusted-key", oldPub, "--trusted-key", newPub); err != nil || !strings.Contains(out, "40 receipts") || !strings.Contains(out, "rotated to "+newPub) {
		t.Fatalf("verify the central store: %v\n%s", err, out)
	}
}

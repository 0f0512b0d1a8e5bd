package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/receipts"
)

// nodeLog writes n receipts signed by the key named name into a fresh log
// with the bench command; it returns the log, the key file and the public
// key.
func nodeLog(t *testing.T, name, n string) (db, keyFile, pub string) {
	t.Helper()
	seed := sha256.Sum256([]byte("cli-node:" + name))
	key := ed25519.NewKeyFromSeed(seed[:])
	db = filepath.Join(t.TempDir(), name+".db")
	keyFile = filepath.Join(t.TempDir(), name+".key")
	os.WriteFile(keyFile, []byte(hex.EncodeToString(seed[:])+"\n"), 0o600)
	t.Setenv("CHIO_SIGNING_KEY", "")
	out, err := runCLI(t, "receipts", "bench", "--receipts", db, "--count", n, "--writers", "1", "--key", keyFile, "--checkpoint-every", "10")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	return db, keyFile, hex.EncodeToString(key.Public().(ed25519.PublicKey))
}

// TestReceiptsCentralStoreCLI: two nodes export packages, a central store
// imports both, and list, verify and prove work across its logs; the
// python verifier checks the packages; a tampered store fails verify.
func TestReceiptsCentralStoreCLI(t *testing.T) {
	dbA, keyA, pubA := nodeLog(t, "a", "40")
	dbB, keyB, pubB := nodeLog(t, "b", "25")
	pkgA, pkgB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	for _, c := range [][]string{{dbA, keyA, pkgA}, {dbB, keyB, pkgB}} {
		out, err := runCLI(t, "receipts", "export", "--receipts", c[0], "--key", c[1], "--package", c[2])
		if err != nil || !strings.Contains(out, "ok: package of local-log-") {
			t.Fatalf("export --package: %v\n%s", err, out)
		}
	}
	py := testutil.PythonCrypto(t)
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(py, filepath.Join(root, "scripts", "verify_export.py"), "--key", pubA, pkgA).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "40 receipts, 4 checkpoints, 40 proofs") {
		t.Fatalf("python verifier on the CLI's package: %v\n%s", err, out)
	}

	store := filepath.Join(t.TempDir(), "central.db")
	if _, err := runCLI(t, "receipts", "import", pkgA, "--receipts", store); exitCode(err) != exitUsage {
		t.Fatalf("import without a trusted key: %v", err)
	}
	// Node b's package is refused while b's key is not trusted: signed by
	// b, as a package; signed by a (trusted), batch by batch, and kept
	// aside.
	if _, err := runCLI(t, "receipts", "import", pkgB, "--receipts", store, "--trusted-key", pubA); exitCode(err) != exitVerifyFailed {
		t.Fatalf("import of an untrusted node's package: %v", err)
	}
	pkgBbyA := filepath.Join(t.TempDir(), "b-by-a")
	out2(t, "receipts", "export", "--receipts", dbB, "--key", keyA, "--package", pkgBbyA)
	if _, err := runCLI(t, "receipts", "import", pkgBbyA, "--receipts", store, "--trusted-key", pubA); exitCode(err) != exitVerifyFailed ||
		!strings.Contains(err.Error(), "untrusted_key") {
		t.Fatalf("import of an untrusted node's package signed by a trusted exporter: %v", err)
	}
	for _, pkg := range []string{pkgA, pkgB, pkgA} {
		out, err := runCLI(t, "receipts", "import", pkg, "--receipts", store, "--trusted-key", pubA, "--trusted-key", pubB)
		if err != nil || !strings.Contains(out, "ok: imported") {
			t.Fatalf("import %s: %v\n%s", pkg, err, out)
		}
	}
	// Importing a local log as if it were a central store is refused.
	if _, err := runCLI(t, "receipts", "import", pkgA, "--receipts", dbA, "--trusted-key", pubA); err == nil {
		t.Fatal("import into a local log accepted")
	}

	out, err := runCLI(t, "receipts", "verify", "--receipts", store, "--trusted-key", pubA, "--trusted-key", pubB)
	if err != nil || !strings.Contains(out, "2 logs") || !strings.Contains(out, "40 receipts") || !strings.Contains(out, "25 receipts") ||
		!strings.Contains(out, "1 refused batches kept aside") {
		t.Fatalf("verify central store: %v\n%s", err, out)
	}
	// The refused batch (b's while b was not trusted) is listed with why.
	out, err = runCLI(t, "receipts", "list", "--receipts", store, "--rejected")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, "untrusted_key") {
		t.Fatalf("list --rejected: %v\n%s", err, out)
	}
	idA, _ := receipts.LogIDOf(pubA)
	idB, _ := receipts.LogIDOf(pubB)

	// list across logs, then one log, with the filters.
	out, err = runCLI(t, "receipts", "list", "--receipts", store, "--all", "--limit", "0", "--json")
	if err != nil || strings.Count(out, "\n") != 65 || !strings.Contains(out, idA) || !strings.Contains(out, idB) {
		t.Fatalf("list --all: %v (%d lines)", err, strings.Count(out, "\n"))
	}
	out, err = runCLI(t, "receipts", "list", "--receipts", store, "--log", idB, "--decision", "deny", "--json", "--limit", "0")
	if err != nil || strings.Count(out, "\n") != 5 || strings.Contains(out, idA) {
		t.Fatalf("list --log b --decision deny: %v\n%s", err, out)
	}
	out, err = runCLI(t, "receipts", "list", "--receipts", store, "--host", "github.com", "--workload", "agent-2", "--since", "2000-01-01T00:00:00Z")
	if err != nil || !strings.HasPrefix(out, "LOG") || !strings.Contains(out, idA) || !strings.Contains(out, idB) {
		t.Fatalf("list --host --workload across logs: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "receipts", "list", "--receipts", dbA, "--log", idA); exitCode(err) != exitUsage {
		t.Fatalf("list --log on a local log: %v", err)
	}

	// prove a receipt of log b by id, and by seq with --log.
	var e struct {
		LogID string `json:"log_id"`
		receipts.Entry
	}
	if err := json.Unmarshal([]byte(strings.SplitN(out2(t, "receipts", "list", "--receipts", store, "--log", idB, "--json", "--limit", "12"), "\n", 13)[11]), &e); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{e.ID}, {"12", "--log", idB}} {
		out, err = runCLI(t, append([]string{"receipts", "prove", "--receipts", store}, args...)...)
		if err != nil {
			t.Fatalf("prove %v: %v\n%s", args, err, out)
		}
		var p receipts.Proof
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			t.Fatal(err)
		}
		if err := p.Check(pubB, receipts.VerifyReceipt); err != nil || p.Seq != 12 || e.Seq != 12 || e.LogID != idB {
			t.Fatalf("proof %v from the central store: %v (seq %d)", args, err, p.Seq)
		}
	}
	if _, err := runCLI(t, "receipts", "prove", "12", "--receipts", store); exitCode(err) != exitUsage {
		t.Fatalf("prove a seq without --log in a store of two logs: %v", err)
	}

	// Commands that read one node's log say what the file is.
	for _, args := range [][]string{{"show", "1"}, {"tail"}} {
		if _, err := runCLI(t, append(append([]string{"receipts"}, args...), "--receipts", store)...); exitCode(err) != exitUsage ||
			!strings.Contains(err.Error(), "is a central store") {
			t.Fatalf("receipts %v on a central store: %v", args, err)
		}
	}

	// The central store re-exports a log as a package the verifier accepts.
	again := filepath.Join(t.TempDir(), "again")
	if out, err := runCLI(t, "receipts", "export", "--receipts", store, "--log", idB, "--key", keyA, "--package", again); err != nil {
		t.Fatalf("export --package from the central store: %v\n%s", err, out)
	}
	if out, err := exec.Command(py, filepath.Join(root, "scripts", "verify_export.py"), "--key", pubB, again).CombinedOutput(); err != nil {
		t.Fatalf("python verifier on the central store's package: %v\n%s", err, out)
	}

	// A receipt changed inside the store fails verify with exit 2.
	bdb, err := bolt.Open(store, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("logs")).Bucket([]byte(idA)).Bucket([]byte("receipts"))
		k := []byte{0, 0, 0, 0, 0, 0, 0, 23}
		v := append([]byte(nil), b.Get(k)...)
		v[len(v)-5] ^= 1
		return b.Put(k, v)
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI(t, "receipts", "verify", "--receipts", store); exitCode(err) != exitVerifyFailed || !strings.Contains(err.Error(), "seq 23") {
		t.Fatalf("verify of a tampered central store: %v\n%s", err, out)
	}
}

func out2(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runCLI(t, args...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return out
}

package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/receipts"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func cliKey() ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("cli-test"))
	return ed25519.NewKeyFromSeed(seed[:])
}

// storedReceipt reads receipt seq from the log at db, opened read-only.
func storedReceipt(t *testing.T, db string, seq uint64) receipts.Entry {
	t.Helper()
	l, err := receipts.Open(db, receipts.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e, err := l.Get(seq)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// cliLog writes a log of n receipts with the bench command and returns its
// path and the key that signed it.
func cliLog(t *testing.T, n string) string {
	t.Helper()
	db := filepath.Join(t.TempDir(), "r.db")
	keyFile := filepath.Join(t.TempDir(), "k")
	os.WriteFile(keyFile, []byte(hex.EncodeToString(cliKey().Seed())+"\n"), 0o600)
	t.Setenv("CHIO_SIGNING_KEY", "")
	out, err := runCLI(t, "receipts", "bench", "--receipts", db, "--count", n, "--writers", "4", "--key", keyFile, "--checkpoint-every", "10")
	if err != nil || !strings.Contains(out, "receipts/s") {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	return db
}

func TestReceiptsVerifyOK(t *testing.T) {
	db := cliLog(t, "45")
	out, err := runCLI(t, "receipts", "verify", "--receipts", db)
	if err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	if !strings.Contains(out, "receipts     45") || !strings.Contains(out, "checkpoints  5") {
		t.Fatalf("verify output:\n%s", out)
	}
	pub := hex.EncodeToString(cliKey().Public().(ed25519.PublicKey))
	if _, err := runCLI(t, "receipts", "verify", "--receipts", db, "--trusted-key", pub); err != nil {
		t.Fatalf("verify with the right key: %v", err)
	}
	if _, err := runCLI(t, "receipts", "verify", "--receipts", db, "--trusted-key", strings.Repeat("ab", 32)); exitCode(err) != exitVerifyFailed {
		t.Fatalf("verify with a wrong trusted key: %v", err)
	}
}

func TestReceiptsVerifyNamesTamperedSeq(t *testing.T) {
	db := cliLog(t, "30")
	bdb, err := bolt.Open(db, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("receipts"))
		k := make([]byte, 8)
		k[7] = 23
		v := bytes.Clone(b.Get(k))
		v = bytes.Replace(v, []byte(`"port":443`), []byte(`"port":444`), 1)
		return b.Put(k, v)
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "receipts", "verify", "--receipts", db)
	if exitCode(err) != exitVerifyFailed || !strings.Contains(err.Error(), "receipt seq 23") {
		t.Fatalf("verify of a tampered log: %v\n%s", err, out)
	}
}

func TestReceiptsListShowProveExport(t *testing.T) {
	db := cliLog(t, "40")
	out, err := runCLI(t, "receipts", "list", "--receipts", db, "--decision", "deny", "--json", "--limit", "0")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 8 { // every fifth synthetic receipt is a deny
		t.Fatalf("list --decision deny: %d lines\n%s", len(lines), out)
	}
	var e receipts.Entry
	if err := json.Unmarshal([]byte(lines[0]), &e); err != nil || e.Decision != "deny" || e.Host != "evil.example" {
		t.Fatalf("list entry %+v: %v", e, err)
	}
	out, err = runCLI(t, "receipts", "list", "--receipts", db, "--host", "github.com", "--workload", "agent-2", "--limit", "2")
	if err != nil || strings.Count(out, "github.com") != 2 || !strings.HasPrefix(out, "SEQ") {
		t.Fatalf("list --host --workload: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "receipts", "list", "--receipts", db, "--since", "yesterday"); err == nil {
		t.Fatal("list accepted --since yesterday")
	}
	for _, arg := range []string{"5", e.ID} {
		out, err = runCLI(t, "receipts", "show", arg, "--receipts", db)
		if err != nil || !strings.Contains(out, `"receipt"`) {
			t.Fatalf("show %s: %v\n%s", arg, err, out)
		}
	}
	if _, err := runCLI(t, "receipts", "show", "999", "--receipts", db); !errors.Is(err, receipts.ErrNotFound) {
		t.Fatalf("show 999: %v", err)
	}
	out, err = runCLI(t, "receipts", "prove", "17", "--receipts", db)
	if err != nil {
		t.Fatal(err)
	}
	var p receipts.Proof
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatal(err)
	}
	if err := p.Check(hex.EncodeToString(cliKey().Public().(ed25519.PublicKey)), receipts.VerifyReceipt); err != nil || p.Seq != 17 {
		t.Fatalf("proof from the CLI: %v", err)
	}
	out, err = runCLI(t, "receipts", "export", "--receipts", db, "--format", "jsonl")
	if err != nil || strings.Count(out, `"kind":"receipt"`) != 40 || strings.Count(out, `"kind":"checkpoint"`) != 4 {
		t.Fatalf("export: %v (%d bytes)", err, len(out))
	}
	if _, err := runCLI(t, "receipts", "export", "--receipts", db, "--format", "csv"); err == nil {
		t.Fatal("export accepted --format csv")
	}
	out, err = runCLI(t, "receipts", "tail", "--receipts", db, "-n", "3")
	if err != nil || strings.Count(out, "\n") != 4 || !strings.Contains(out, "\n40 ") {
		t.Fatalf("tail: %v\n%s", err, out)
	}
}

func TestReceiptsReadersTimeOutOnHeldLog(t *testing.T) {
	db := filepath.Join(t.TempDir(), "held.db")
	l, err := receipts.Open(db, receipts.Options{Key: cliKey()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = runCLI(t, "receipts", "verify", "--receipts", db, "--lock-timeout", "100ms")
	if !errors.Is(err, receipts.ErrLocked) || !strings.Contains(err.Error(), db) {
		t.Fatalf("verify of a held log: %v", err)
	}
}

func TestReceiptsMissingAndCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := runCLI(t, "receipts", "verify", "--receipts", filepath.Join(dir, "nope.db")); !errors.Is(err, receipts.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	junk := filepath.Join(dir, "junk.db")
	os.WriteFile(junk, bytes.Repeat([]byte("x"), 10000), 0o600)
	_, err := runCLI(t, "receipts", "verify", "--receipts", junk)
	if !errors.Is(err, receipts.ErrCorrupt) || !strings.Contains(err.Error(), junk) {
		t.Fatalf("junk: %v", err)
	}
	if b, _ := os.ReadFile(junk); !bytes.Equal(b, bytes.Repeat([]byte("x"), 10000)) {
		t.Fatal("a reader changed the damaged file")
	}
}

func TestKeygen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k")
	out, err := runCLI(t, "keygen", "--out", p)
	if err != nil || !strings.Contains(out, "kernel_key ") {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", st.Mode(), err)
	}
	if _, err := runCLI(t, "keygen", "--out", p); err == nil {
		t.Fatal("keygen overwrote a key")
	}
}

func TestBenchRefusesAnotherKeysLog(t *testing.T) {
	db := cliLog(t, "5")
	other := filepath.Join(t.TempDir(), "other")
	seed := sha256.Sum256([]byte("other"))
	os.WriteFile(other, []byte(hex.EncodeToString(seed[:])+"\n"), 0o600)
	if _, err := runCLI(t, "receipts", "bench", "--receipts", db, "--count", "5", "--key", other); !errors.Is(err, receipts.ErrKeyMismatch) {
		t.Fatalf("bench with another key: %v", err)
	}
}

// damagedCopy writes a snapshot of a 300-receipt log (a copy cut to its
// high-water mark, as the agent serves it) and returns its path, the key
// file that signed it and the snapshot's bytes.
func damagedCopy(t *testing.T) (string, string, []byte) {
	t.Helper()
	db := cliLog(t, "300")
	l, err := receipts.Open(db, receipts.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var snap bytes.Buffer
	_, err = l.Snapshot(&snap)
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "k")
	os.WriteFile(keyFile, []byte(hex.EncodeToString(cliKey().Seed())+"\n"), 0o600)
	return filepath.Join(t.TempDir(), "damaged.db"), keyFile, snap.Bytes()
}

// runDamaged runs the real binary (a fault would kill a test process) and
// wants a clean failure: an exit status, not a signal or a Go panic, a
// message naming the file and the damage, and the file's bytes unchanged.
func runDamaged(t *testing.T, db, want string, args ...string) {
	t.Helper()
	before, _ := os.ReadFile(db)
	cmd := exec.Command(binary(t), args...)
	cmd.Env = append(os.Environ(), "CHIO_SIGNING_KEY=")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
		t.Fatalf("%v on a damaged log: want a non-zero exit status, got %v\n%s", args[:2], err, out)
	}
	if bytes.Contains(out, []byte("goroutine ")) || bytes.Contains(out, []byte("panic")) || bytes.Contains(out, []byte("fatal error")) {
		t.Fatalf("%v on a damaged log crashed:\n%s", args[:2], out)
	}
	if !bytes.Contains(out, []byte(db)) || !bytes.Contains(out, []byte(want)) {
		t.Fatalf("%v on a damaged log: message does not name %s and %q:\n%s", args[:2], db, want, out)
	}
	if after, _ := os.ReadFile(db); !bytes.Equal(before, after) {
		t.Fatalf("%v changed the damaged log", args[:2])
	}
	t.Logf("%v: exit %d: %s", args[:2], ee.ExitCode(), bytes.TrimSpace(out))
}

// TestDamagedLogFailsCleanly: a log cut in half killed `receipts verify` and
// `exec` with SIGBUS, and a random page 2 made `exec` panic inside bbolt.
func TestDamagedLogFailsCleanly(t *testing.T) {
	db, keyFile, snap := damagedCopy(t)
	policy := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(policy, []byte("hushspec: \"0.1.0\"\nname: t\nrules:\n  egress:\n    allow: [\"127.0.0.1\"]\n    default: block\n"), 0o644)
	commands := [][]string{
		{"receipts", "verify", "--receipts", db},
		{"receipts", "bench", "--receipts", db, "--count", "1", "--writers", "1", "--key", keyFile},
		{"exec", "--policy", policy, "--key", keyFile, "--receipts", db, "--", "true"},
	}

	os.WriteFile(db, snap[:len(snap)/2], 0o600)
	for _, args := range commands {
		runDamaged(t, db, "truncated", args...)
	}

	// Garbage over a page in use (the receipts bucket's root: page 2 can
	// be a free page, whose contents nothing reads).
	root := rootPage(t, snap, "receipts")
	page2 := bytes.Clone(snap)
	rng := rand.New(rand.NewPCG(2, 2))
	for i := 4096 * root; i < 4096*(root+1); i++ {
		page2[i] = byte(rng.Uint32())
	}
	os.WriteFile(db, page2, 0o600)
	for _, args := range commands {
		runDamaged(t, db, fmt.Sprintf("page %d:", root), args...)
	}

	// A flipped byte in a receipt sealed long ago was appended to without
	// a word; now every command names the receipt.
	os.WriteFile(db, snap, 0o600)
	e := storedReceipt(t, db, 150)
	sig := []byte(`"signature":"`)
	flipped, n := bytes.Clone(snap), 0
	for i := 0; ; n++ {
		k := bytes.Index(flipped[i:], e.Receipt)
		if k < 0 {
			break
		}
		j := i + k + bytes.Index(e.Receipt, sig) + len(sig) + 3
		flipped[j] ^= 'a' ^ 'b' // a hex digit a<->b, or another byte: the receipt changes either way
		i += k + 1
	}
	if n == 0 {
		t.Fatal("receipt 150 not found in the file")
	}
	os.WriteFile(db, flipped, 0o600)
	for _, args := range commands {
		runDamaged(t, db, "receipt seq 150", args...)
	}
}

// rootPage is the page holding the root of bucket name in the bbolt file
// data.
func rootPage(t *testing.T, data []byte, name string) int {
	t.Helper()
	path := filepath.Join(t.TempDir(), "root.db")
	os.WriteFile(path, data, 0o600)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var root int
	db.View(func(tx *bolt.Tx) error {
		root = int(tx.Bucket([]byte(name)).Root())
		return nil
	})
	if root < 2 {
		t.Fatalf("bucket %s is inline", name)
	}
	return root
}

package central

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/receipts"
)

// exportLocal writes the package of the local log at path, signed by key.
func exportLocal(t *testing.T, path string, key ed25519.PrivateKey) string {
	t.Helper()
	l, err := receipts.Open(path, receipts.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	id, _ := receipts.LogIDOf(pubHex(key))
	dir := filepath.Join(t.TempDir(), "pkg")
	src := func(ctx context.Context, fn func(receipts.SealedBatch) error) error {
		return LocalBatches(ctx, l, 0, fn)
	}
	if _, err := WritePackage(context.Background(), dir, id, pubHex(key), src, key, time.Unix(1760000000, 0)); err != nil {
		t.Fatal(err)
	}
	return dir
}

func pythonVerify(t *testing.T, dir string, key string) (string, error) {
	t.Helper()
	py := testutil.PythonCrypto(t)
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, filepath.Join(root, "scripts", "verify_export.py"), "--key", key, dir).CombinedOutput()
	return string(out), err
}

func TestPackageRoundTrip(t *testing.T) {
	k := testKey("pkg")
	logPath := makeLog(t, k, 37, 10, 0)
	dir := exportLocal(t, logPath, k)
	if out, err := pythonVerify(t, dir, pubHex(k)); err != nil || !strings.Contains(out, "37 receipts, 4 checkpoints, 37 proofs") {
		t.Fatalf("python verifier on a package: %v\n%s", err, out)
	}
	s, _ := openStore(t, k)
	res, err := s.Import(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stored != 4 || res.Duplicate != 0 {
		t.Fatalf("import: %+v", res)
	}
	before := snapshot(t, s)
	res, err = s.Import(context.Background(), dir)
	if err != nil || res.Stored != 0 || res.Duplicate != 4 {
		t.Fatalf("second import: %+v %v", res, err)
	}
	if !bytes.Equal(before, snapshot(t, s)) {
		t.Fatal("importing the same package twice changed the store")
	}
	rep := mustVerify(t, s)
	if len(rep.Logs) != 1 || rep.Logs[0].Verified != 37 {
		t.Fatalf("verify: %+v", rep)
	}
	// What the store holds exports to the same package content.
	id, _ := receipts.LogIDOf(pubHex(k))
	again := filepath.Join(t.TempDir(), "again")
	src := func(ctx context.Context, fn func(receipts.SealedBatch) error) error { return s.Batches(ctx, id, 0, fn) }
	if _, err := WritePackage(context.Background(), again, id, pubHex(k), src, k, time.Unix(1760000000, 0)); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ReceiptsFile, CheckpointsFile, ProofsFile, ManifestFile} {
		a, _ := os.ReadFile(filepath.Join(dir, f))
		b, _ := os.ReadFile(filepath.Join(again, f))
		if !bytes.Equal(a, b) {
			t.Fatalf("%s differs between the node's package and the central store's", f)
		}
	}
}

func TestPackageExtendsStoredChain(t *testing.T) {
	k := testKey("extend")
	logPath := makeLog(t, k, 20, 10, 0)
	first := exportLocal(t, logPath, k)
	appendLog(t, logPath, k, 20, 45, 10, 0)
	second := exportLocal(t, logPath, k)
	s, _ := openStore(t, k)
	if _, err := s.Import(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	res, err := s.Import(context.Background(), second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Duplicate != 2 || res.Stored != 3 {
		t.Fatalf("import of the longer package: %+v, want 2 duplicate and 3 stored", res)
	}
	rep := mustVerify(t, s)
	if rep.Logs[0].LastSeq != 45 || rep.Logs[0].Checkpoints != 5 {
		t.Fatalf("after extension: %+v", rep.Logs[0])
	}
	// The older, shorter package is now wholly stored.
	if res, err := s.Import(context.Background(), first); err != nil || res.Stored != 0 {
		t.Fatalf("re-import of the shorter package: %+v %v", res, err)
	}
}

func TestForkedPackageRefusedNamingBoth(t *testing.T) {
	k := testKey("forkpkg")
	honest := makeLog(t, k, 30, 10, 0)
	// The same key, another history from receipt 11 on.
	forked := filepath.Join(t.TempDir(), "forked.db")
	appendLog(t, forked, k, 0, 10, 10, 0)
	appendLog(t, forked, k, 10, 30, 10, 500)
	s, _ := openStore(t, k)
	if _, err := s.Import(context.Background(), exportLocal(t, honest, k)); err != nil {
		t.Fatal(err)
	}
	_, err := s.Import(context.Background(), exportLocal(t, forked, k))
	var be *receipts.BatchError
	if !errors.As(err, &be) || be.Defect != receipts.DefectFork || be.CheckpointSeq != 2 {
		t.Fatalf("forked package: %v, want a fork at checkpoint 2", err)
	}
	id, _ := receipts.LogIDOf(pubHex(k))
	var stored, offered receipts.Checkpoint
	_ = s.Batches(context.Background(), id, 1, func(b receipts.SealedBatch) error {
		if stored.Body.CheckpointSeq == 0 {
			stored, _ = receipts.ParseCheckpoint(b.Checkpoint)
		}
		return nil
	})
	fb := batchesOf(t, forked)
	offered, _ = receipts.ParseCheckpoint(fb[1].Checkpoint)
	ss, _ := stored.Body.BodySHA256()
	osha, _ := offered.Body.BodySHA256()
	if ss == osha || !strings.Contains(err.Error(), ss) || !strings.Contains(err.Error(), osha) {
		t.Fatalf("fork error does not name both checkpoints (%s, %s): %v", ss, osha, err)
	}
	if rep := mustVerify(t, s); rep.Logs[0].LastSeq != 30 || rep.Rejected != 1 {
		t.Fatalf("after the refused fork: %+v", rep)
	}
}

func TestTamperedPackageRefused(t *testing.T) {
	k := testKey("tamperpkg")
	dir := exportLocal(t, makeLog(t, k, 15, 5, 0), k)
	s, _ := openStore(t, k)
	cases := []struct {
		name string
		edit func(t *testing.T, d string)
		want string
	}{
		{"receipt byte", func(t *testing.T, d string) { flip(t, filepath.Join(d, ReceiptsFile), `"workload":"agent-`) }, "sha256"},
		{"manifest", func(t *testing.T, d string) { flip(t, filepath.Join(d, ManifestFile), `"created_at":17`) }, "manifest signature"},
		{"extra file", func(t *testing.T, d string) { os.WriteFile(filepath.Join(d, "x"), nil, 0o644) }, "not in the manifest"},
		{"missing file", func(t *testing.T, d string) { os.Remove(filepath.Join(d, ProofsFile)) }, "proofs.jsonl"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := filepath.Join(t.TempDir(), "p")
			copyDir(t, dir, d)
			c.edit(t, d)
			if _, err := s.Import(context.Background(), d); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("import: %v, want %q", err, c.want)
			}
			if out, err := pythonVerify(t, d, pubHex(k)); err == nil {
				t.Fatalf("python verifier accepted a tampered package:\n%s", out)
			}
		})
	}
	// A package signed by a key the store does not trust.
	other, _ := openStore(t, testKey("someone else"))
	if _, err := other.Import(context.Background(), dir); !errors.Is(err, ErrPackage) || !strings.Contains(err.Error(), "not trusted") {
		t.Fatalf("import with an untrusted exporter: %v", err)
	}
	if logs, _ := s.Logs(); len(logs) != 0 {
		t.Fatalf("refused packages stored logs: %v", logs)
	}
}

func flip(t *testing.T, path, after string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(after))
	if i < 0 {
		t.Fatalf("%s has no %q", path, after)
	}
	b[i+len(after)] ^= 1
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Mkdir(to, 0o755); err != nil {
		t.Fatal(err)
	}
	es, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// resign recomputes the manifest's file list and signs it again with key,
// as an exporter holding the key would after changing the files: only the
// checks of the content itself can then find the change.
func resign(t *testing.T, dir string, key ed25519.PrivateKey) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var sm signedManifest
	if err := json.Unmarshal(raw, &sm); err != nil {
		t.Fatal(err)
	}
	for i, f := range sm.Body.Files {
		b, err := os.ReadFile(filepath.Join(dir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		sm.Body.Files[i].SHA256, sm.Body.Files[i].Size = hex.EncodeToString(sum[:]), int64(len(b))
	}
	body, _ := jcs.Marshal(&sm.Body)
	sm.Signature = hex.EncodeToString(ed25519.Sign(key, body))
	out, _ := jcs.Marshal(&sm)
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), append(out, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestResignedPackageContentChecked: the exporter's key signs a manifest
// over changed files; the receipts, checkpoints and proofs are still
// checked, by the importer and by the python verifier.
func TestResignedPackageContentChecked(t *testing.T) {
	k := testKey("resign")
	dir := exportLocal(t, makeLog(t, k, 15, 5, 0), k)
	s, _ := openStore(t, k)
	cases := []struct {
		name, file, after, goWant, pyWant string
	}{
		{"forged receipt", ReceiptsFile, `"workload":"agent-`, "forged_receipt", "receipt id does not match"},
		{"forged checkpoint", CheckpointsFile, `"issued_at":17`, "forged_checkpoint", "checkpoint signature does not verify"},
		{"bent proof", ProofsFile, `"audit_path":["0x`, "path yields", "audit path does not yield"},
		{"bent leaf hash", ProofsFile, `"leaf_hash":"0x`, "leaf_hash", "leaf_hash"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := filepath.Join(t.TempDir(), "p")
			copyDir(t, dir, d)
			flip(t, filepath.Join(d, c.file), c.after)
			resign(t, d, k)
			if _, err := s.Import(context.Background(), d); err == nil || !strings.Contains(err.Error(), c.goWant) {
				t.Fatalf("import: %v, want %q", err, c.goWant)
			}
			if out, err := pythonVerify(t, d, pubHex(k)); err == nil || !strings.Contains(out, c.pyWant) {
				t.Fatalf("python verifier: %v, want %q:\n%s", err, c.pyWant, out)
			}
		})
	}
	// Unchanged but re-signed, it still imports: the checks above are the
	// content's, not the signature's.
	d := filepath.Join(t.TempDir(), "p")
	copyDir(t, dir, d)
	resign(t, d, k)
	if _, err := s.Import(context.Background(), d); err != nil {
		t.Fatal(err)
	}
}

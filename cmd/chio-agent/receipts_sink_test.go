package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/objstore"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/sink"
	"github.com/backbay-labs/chio-agent/receipts/sink/sinktest"
)

// logBatches reads the sealed batches of the log at db.
func logBatches(t *testing.T, db string) (string, []receipts.SealedBatch) {
	t.Helper()
	l, err := receipts.Open(db, receipts.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	id, err := l.LogID()
	if err != nil {
		t.Fatal(err)
	}
	return id, sinktest.Sealed(t, l)
}

// shipTo puts batches into the sink at url, as a shipper does.
func shipTo(t *testing.T, url string, bs []receipts.SealedBatch) {
	t.Helper()
	st, err := sink.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i, b := range bs {
		if err := st.Put(context.Background(), b, uint64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReceiptsSinkCLI, against each object store's emulator: two nodes'
// logs in one segment sink verify (and fail against a trust list that
// leaves one node out); import --sink stores both side by side in a
// central store, twice without change, which verifies and re-exports a
// package the python verifier accepts; a changed receipt and a removed
// object fail verify with exit 2 naming the log and checkpoint.
func TestReceiptsSinkCLI(t *testing.T) {
	dbA, _, pubA := nodeLog(t, "a", "40")
	dbB, keyB, pubB := nodeLog(t, "b", "25")
	idA, bsA := logBatches(t, dbA)
	_, bsB := logBatches(t, dbB)
	py := testutil.PythonCrypto(t)
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		base, put := b.Bucket(t)
		fleet := base + "fleet"
		shipTo(t, fleet, bsA)
		shipTo(t, fleet, bsB)

		out, err := runCLI(t, "receipts", "verify", "--sink", fleet)
		if err != nil || !strings.Contains(out, "ok: receipt sink "+fleet+": 2 logs") || !strings.Contains(out, "40 receipts (seq 1-40") ||
			!strings.Contains(out, "25 receipts (seq 1-25") || !strings.Contains(out, "4 checkpoints") {
			t.Fatalf("verify --sink: %v\n%s", err, out)
		}
		var rep sinkReport
		if err := json.Unmarshal([]byte(out2(t, "receipts", "verify", "--sink", fleet, "--json")), &rep); err != nil ||
			rep.Sink != fleet || len(rep.Logs) != 2 || rep.Logs[0].Verified+rep.Logs[1].Verified != 65 {
			t.Fatalf("verify --sink --json: %+v, %v", rep, err)
		}
		if _, err := runCLI(t, "receipts", "verify", "--sink", fleet, "--trusted-key", pubA); exitCode(err) != exitVerifyFailed ||
			!strings.Contains(err.Error(), "untrusted_key") {
			t.Fatalf("verify --sink trusting only node a: %v", err)
		}

		store := filepath.Join(t.TempDir(), "central.db")
		for i := range 2 {
			out, err := runCLI(t, "receipts", "import", "--sink", fleet, "--receipts", store, "--trusted-key", pubA, "--trusted-key", pubB)
			stored, dup := "4 checkpoints stored, 0 already stored", "0 checkpoints stored, 4 already stored"
			if i == 1 {
				stored, dup = dup, stored
			}
			if err != nil || strings.Count(out, "ok: imported") != 2 || !strings.Contains(out, stored) || strings.Contains(out, dup) {
				t.Fatalf("import --sink (%d): %v\n%s", i+1, err, out)
			}
		}
		out, err = runCLI(t, "receipts", "verify", "--receipts", store, "--trusted-key", pubA, "--trusted-key", pubB)
		if err != nil || !strings.Contains(out, "2 logs") || !strings.Contains(out, "40 receipts") || !strings.Contains(out, "25 receipts") {
			t.Fatalf("verify of the central store imported from the sink: %v\n%s", err, out)
		}
		pkg := filepath.Join(t.TempDir(), "a")
		out2(t, "receipts", "export", "--receipts", store, "--log", idA, "--key", keyB, "--package", pkg)
		if out, err := exec.Command(py, filepath.Join(root, "scripts", "verify_export.py"), "--key", pubA, pkg).CombinedOutput(); err != nil ||
			!strings.Contains(string(out), "40 receipts, 4 checkpoints, 40 proofs") {
			t.Fatalf("python verifier on the receipts read back from the sink: %v\n%s", err, out)
		}

		// A changed receipt signature in checkpoint 2's object (still
		// canonical JSON, so the object reads): verify names the log, the
		// checkpoint and the receipt; import refuses it and keeps checkpoint 1.
		for i, b := range bsA {
			data, err := sink.EncodeSegment(&b, uint64(i+1))
			if err != nil {
				t.Fatal(err)
			}
			if i == 1 {
				data = flipSignature(t, data)
			}
			put("tampered/"+sink.SegmentName(idA, uint64(i+1)), string(data))
		}
		_, err = runCLI(t, "receipts", "verify", "--sink", base+"tampered")
		if exitCode(err) != exitVerifyFailed || !strings.Contains(err.Error(), "log "+idA+" checkpoint 2 seq 11") {
			t.Fatalf("verify --sink of a changed receipt: %v", err)
		}
		other := filepath.Join(t.TempDir(), "central.db")
		out, err = runCLI(t, "receipts", "import", "--sink", base+"tampered", "--receipts", other, "--trusted-key", pubA)
		if exitCode(err) != exitVerifyFailed || !strings.Contains(out, "refused: imported "+idA) || !strings.Contains(out, "1 checkpoints stored") {
			t.Fatalf("import --sink of a changed receipt: %v\n%s", err, out)
		}

		// Checkpoint 2's object missing: a gap at checkpoint 3.
		for i, b := range bsA {
			if i != 1 {
				data, _ := sink.EncodeSegment(&b, uint64(i+1))
				put("gap/"+sink.SegmentName(idA, uint64(i+1)), string(data))
			}
		}
		_, err = runCLI(t, "receipts", "verify", "--sink", base+"gap")
		if exitCode(err) != exitVerifyFailed || !strings.Contains(err.Error(), "log "+idA+" checkpoint 3") || !strings.Contains(err.Error(), "gap") {
			t.Fatalf("verify --sink with checkpoint 2 missing: %v", err)
		}

		// A damaged object fails verify naming it.
		put("damaged/"+sink.SegmentName(idA, 1), "{}\n")
		_, err = runCLI(t, "receipts", "verify", "--sink", base+"damaged")
		if exitCode(err) != exitVerifyFailed || !strings.Contains(err.Error(), "damaged/"+sink.SegmentName(idA, 1)) {
			t.Fatalf("verify --sink of a damaged object: %v", err)
		}
		// An empty prefix holds nothing to verify.
		if _, err := runCLI(t, "receipts", "verify", "--sink", base+"empty"); err == nil || !strings.Contains(err.Error(), "holds no receipt logs") {
			t.Fatalf("verify --sink of an empty prefix: %v", err)
		}
	})
}

// flipSignature changes one hex digit of the first receipt's signature in
// a segment object.
func flipSignature(t *testing.T, data []byte) []byte {
	t.Helper()
	s := string(data)
	i := strings.Index(s, `"signature":"`)
	if i < 0 {
		t.Fatal("no signature in the segment")
	}
	i += len(`"signature":"`)
	c := byte('0')
	if s[i] == '0' {
		c = '1'
	}
	return []byte(s[:i] + string(c) + s[i+1:])
}

// TestReceiptsSinkUsage: what --sink refuses before reaching any store.
func TestReceiptsSinkUsage(t *testing.T) {
	store := filepath.Join(t.TempDir(), "central.db")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"verify", "--sink", "gs://b/p", "--receipts", store}, "give one"},
		{[]string{"verify", "--sink", "/var/lib/chio-agent/receipts.db"}, "not an s3://"},
		{[]string{"verify", "--sink", "bigquery://project.chio.receipts"}, "gs://BUCKET/PREFIX"},
		{[]string{"verify", "--sink", "gs://b/../p"}, "not a clean relative path"},
		{[]string{"import", "dir", "--sink", "gs://b/p", "--receipts", store, "--trusted-key", "00"}, "give one"},
		{[]string{"import", "--receipts", store, "--trusted-key", "00"}, "give a package DIR or --sink URL"},
		{[]string{"import", "--sink", "gs://b/p", "--receipts", store}, "no --trusted-key"},
	} {
		_, err := runCLI(t, append([]string{"receipts"}, c.args...)...)
		if exitCode(err) != exitUsage || !strings.Contains(err.Error(), c.want) {
			t.Errorf("receipts %v: %v, want a usage error saying %q", c.args, err, c.want)
		}
	}
}

package receipts

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

func exportLog(t *testing.T, l *Log) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := l.Export(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestExportOrderAndShape(t *testing.T) {
	key := testKey("e")
	l, _ := openTest(t, Options{Key: key, CheckpointEvery: 4})
	for i := 0; i < 10; i++ {
		if _, err := l.Append(context.Background(), receipt(t, key, i)); err != nil {
			t.Fatal(err)
		}
	}
	out := exportLog(t, l)
	var kinds []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line struct {
			Kind       string          `json:"kind"`
			Seq        uint64          `json:"seq"`
			Checkpoint json.RawMessage `json:"checkpoint"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatal(err)
		}
		if line.Kind == "receipt" {
			kinds = append(kinds, "r")
		} else {
			kinds = append(kinds, "C")
		}
	}
	if got := strings.Join(kinds, ""); got != "rrrrCrrrrCrr" {
		t.Fatalf("export order %s", got)
	}
}

// TestExportVerifiesWithPython checks an export with scripts/verify_export.py,
// an independent implementation of the formats, and checks that it notices
// tampering too.
func TestExportVerifiesWithPython(t *testing.T) {
	py := testutil.PythonCrypto(t)
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "scripts", "verify_export.py")
	key := testKey("py")
	l, _ := openTest(t, Options{Key: key, CheckpointEvery: 7})
	for i := 0; i < 50; i++ {
		if _, err := l.Append(context.Background(), receipt(t, key, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	for i := 50; i < 53; i++ { // an unsealed tail
		if _, err := l.Append(context.Background(), receipt(t, key, i)); err != nil {
			t.Fatal(err)
		}
	}
	good := exportLog(t, l)
	dir := t.TempDir()
	run := func(name string, data []byte) (string, error) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(py, script, "--key", l.KernelKey(), p).CombinedOutput()
		return string(out), err
	}
	out, err := run("good.jsonl", good)
	if err != nil || !strings.Contains(out, "ok: 53 receipts, 8 checkpoints, 3 unsealed") {
		t.Fatalf("python verifier on a good export: %v\n%s", err, out)
	}
	lines := bytes.SplitAfter(good, []byte("\n"))
	// Flip one hex digit of receipt 9's signature.
	bad := bytes.Clone(good)
	i := bytes.Index(bad, []byte(`"seq":9}`))
	j := bytes.LastIndex(bad[:i], []byte(`"signature":"`)) + len(`"signature":"`) + 3
	bad[j] ^= 1
	if out, err := run("sig.jsonl", bad); err == nil || !strings.Contains(out, "receipt seq 9") {
		t.Fatalf("python verifier missed a bad signature: %v\n%s", err, out)
	}
	// Drop receipt 3.
	dropped := bytes.Join(append(append([][]byte{}, lines[:2]...), lines[3:]...), nil)
	if out, err := run("gap.jsonl", dropped); err == nil || !strings.Contains(out, "expected seq 3") {
		t.Fatalf("python verifier missed a gap: %v\n%s", err, out)
	}
}

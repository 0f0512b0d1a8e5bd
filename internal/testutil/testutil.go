// Package testutil holds helpers shared by the tests of every package: where
// the vendored conformance data lives, how privileged tests skip, and the
// fixtures they share (cgroups, network namespaces, loopback servers, the
// exit status of a child).
//
// A privileged test skips with a one-line reason on a machine that cannot run
// it, but under CI=true a skip is a failure: CI runs as root and must run them.
package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Skip skips the test with reason, except under CI=true, where it fails the
// test instead: a privileged test that CI cannot run is a broken CI, not a pass.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("privileged test cannot run under CI=true: %s", reason)
	}
	t.Skip(reason)
}

// RequireTools skips t, naming the first of tools that is not on PATH
// (make test installs them; in CI a skip fails the run).
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Skip(t, tool+" is not installed")
		}
	}
}

// RequireRoot skips (or, under CI, fails) the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")
	}
}

// ConformanceDir returns the directory of the conformance data: the
// CHIO_CONFORMANCE_DIR variable when set (to test against another copy), else
// the copy vendored in the repository at testdata/conformance (see its
// PROVENANCE.md). Its absence fails the test, since a conformance test that
// does not run proves nothing.
func ConformanceDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("CHIO_CONFORMANCE_DIR"); d != "" {
		return d
	}
	root, err := ModuleRoot()
	if err != nil {
		t.Fatalf("find module root: %v", err)
	}
	d := filepath.Join(root, "testdata", "conformance")
	if _, err := os.Stat(d); err != nil {
		t.Fatalf("conformance data not found at %s (set CHIO_CONFORMANCE_DIR): %v", d, err)
	}
	return d
}

// ChioVectors decodes the Chio conformance vectors of one kind
// (chio/KIND/v1.json under ConformanceDir: canonical, receipt, capability)
// into v, and fails unless the file holds exactly cases cases: a test
// written for one set of vectors must not silently run on fewer.
func ChioVectors(t testing.TB, kind string, cases int, v any) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(ConformanceDir(t), "chio", kind, "v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	var all struct {
		Cases []json.RawMessage `json:"cases"`
	}
	if err := json.Unmarshal(raw, &all); err != nil {
		t.Fatalf("decode %s vectors: %v", kind, err)
	}
	if len(all.Cases) != cases {
		t.Fatalf("want %d %s cases, got %d", cases, kind, len(all.Cases))
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("decode %s vectors: %v", kind, err)
	}
}

// PythonCrypto returns a python3 that has the 'cryptography' package, for
// tests that run scripts/verify_export.py, or skips (fails under CI). The
// python3 on PATH may be another installation than Debian's (pyenv): the
// first that has the package is taken (make test installs Debian's
// python3-cryptography).
func PythonCrypto(t testing.TB) string {
	t.Helper()
	for _, cand := range []string{"python3", "/usr/bin/python3"} {
		if p, err := exec.LookPath(cand); err == nil && exec.Command(p, "-c", "import cryptography").Run() == nil {
			return p
		}
	}
	Skip(t, "no python3 with the 'cryptography' package (apt-get install python3-cryptography)")
	return ""
}

// ModuleRoot returns the directory holding go.mod, searching upwards from the
// working directory (go test runs each package in its own directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}

// PinDir names a bpffs directory for one test's pinned state, unique to it
// (never the agent's default): the caller removes what it pins there.
func PinDir(t testing.TB) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "/sys/fs/bpf/chio-test-" + hex.EncodeToString(b[:])
}

// MakeFIFO makes a named pipe at path: a configuration path a hostile or
// careless user can point the agent at, where a plain open(2) would wait
// forever for a writer.
func MakeFIFO(t testing.TB, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
}

// RefusedWithout runs load, which must return an error that wraps want and
// names path, and fails the test if load is still blocked after 20 s (a load
// that waits on a FIFO never returns).
func RefusedWithout(t testing.TB, name string, want error, path string, load func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- load() }()
	select {
	case err := <-done:
		if !errors.Is(err, want) || !strings.Contains(err.Error(), path) {
			t.Fatalf("%s: want a refusal naming %s, got %v", name, path, err)
		}
		t.Logf("%s: %v", name, err)
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: still blocked on %s after 20s", name, path)
	}
}

// ExitCode is the exit status that err, from an exec.Cmd's Run, Output or
// CombinedOutput, reports: 0 for nil, the process's status for an
// *exec.ExitError. Any other error means the command did not run, and
// fails t.
func ExitCode(t testing.TB, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("run: %v", err)
	return -1
}

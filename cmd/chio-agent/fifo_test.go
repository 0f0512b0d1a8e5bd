package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestFIFOConfigRefused: `extends:` pointing at a FIFO, or --config a
// FIFO, hung the command forever, past SIGTERM. Every command that reads
// configuration now refuses a file that is not regular, at once, naming it.
func TestFIFOConfigRefused(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "base.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(dir, "policy.yaml")
	os.WriteFile(child, []byte("hushspec: \"0.1.0\"\nextends: base.yaml\nrules:\n  egress:\n    allow: [\"127.0.0.1\"]\n"), 0o644)
	valid := filepath.Join(dir, "valid.yaml")
	os.WriteFile(valid, []byte("hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [\"127.0.0.1\"]\n"), 0o644)
	key := filepath.Join(dir, "k")
	os.WriteFile(key, bytes.Repeat([]byte("ab"), 32), 0o600)
	for _, args := range [][]string{
		{"run", "--config", fifo},
		{"run", "--policy", child, "--key", key, "--receipts", filepath.Join(dir, "r.db")},
		{"exec", "--config", fifo, "--policy", child, "--key", key, "--", "true"},
		{"api", "protect", "--config", fifo},
		{"api", "protect", "--policy", valid, "--spec", fifo, "--upstream", "http://127.0.0.1:1", "--key", key, "--receipts", filepath.Join(dir, "s.db")},
		{"policy", "check", fifo},
		{"policy", "check", child},
		{"exec", "--policy", child, "--key", key, "--receipts", filepath.Join(dir, "r.db"), "--", "true"},
		{"exec", "--policy", valid, "--key", fifo, "--receipts", filepath.Join(dir, "r.db"), "--", "true"},
	} {
		// The guard only ends a hang, which is the failure; it is not a
		// measure of speed.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(os.Environ(), "CHIO_SIGNING_KEY=")
		out, err := cmd.CombinedOutput()
		hung := ctx.Err() != nil
		cancel()
		var ee *exec.ExitError
		switch {
		case hung:
			t.Fatalf("%v: still running after a minute (blocked on the FIFO)", args)
		case !errors.As(err, &ee) || ee.ExitCode() <= 0:
			t.Fatalf("%v: want a non-zero exit, got %v\n%s", args, err, out)
		case !bytes.Contains(out, []byte("not a regular file")):
			t.Fatalf("%v: the error does not say what is wrong:\n%s", args, out)
		}
		t.Logf("%v: exit %d: %s", args, ee.ExitCode(), bytes.TrimSpace(out))
	}
}

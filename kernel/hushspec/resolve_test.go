package hushspec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/regfile"
)

// TestExtendsFIFORefused: `extends:` naming a FIFO blocked the load forever
// (open(2) of a FIFO waits for a writer), past SIGTERM. Only regular files
// are read now, and the error names the path.
func TestExtendsFIFORefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "base.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(dir, "policy.yaml")
	os.WriteFile(child, []byte("hushspec: \"0.1.0\"\nextends: base.yaml\nrules:\n  egress:\n    allow: [\"a.example\"]\n"), 0o644)
	for name, load := range map[string]func() error{
		"LoadFile":           func() error { _, err := LoadFile(child); return err },
		"LoadFile of a FIFO": func() error { _, err := LoadFile(fifo); return err },
		"Parse WithBaseDir": func() error {
			data, _ := os.ReadFile(child)
			_, err := Parse(data, WithBaseDir(dir))
			return err
		},
	} {
		done := make(chan error, 1)
		go func() { done <- load() }()
		select {
		case err := <-done:
			if !errors.Is(err, regfile.ErrNotRegular) || !strings.Contains(err.Error(), fifo) {
				t.Fatalf("%s: want a refusal naming %s, got %v", name, fifo, err)
			}
			t.Logf("%s: %v", name, err)
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: still blocked on the FIFO after 20s", name)
		}
	}
}

// TestLoadObeysContext: a load whose context is done fails with its error.
func TestLoadObeysContext(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "policy.yaml")
	os.WriteFile(p, []byte("hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [\"a.example\"]\n"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := LoadFile(p, WithContext(ctx)); !errors.Is(err, context.Canceled) {
		t.Fatalf("load with a canceled context: %v", err)
	}
}

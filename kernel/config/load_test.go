package config

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

// TestLoadRefusesFIFO: --config naming a FIFO blocked the start forever,
// past SIGTERM. So did a policy source naming one. Both are refused at once,
// naming the path.
func TestLoadRefusesFIFO(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "kernel.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, load := range map[string]func() error{
		"kernel.yaml": func() error { _, err := LoadContext(context.Background(), fifo, env(nil)); return err },
		"policy":      func() error { _, err := LoadPolicy(context.Background(), fifo, ""); return err },
		"policy URL":  func() error { _, err := LoadPolicy(context.Background(), "file://"+fifo, ""); return err },
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
	p := filepath.Join(dir, "ok.yaml")
	os.WriteFile(p, []byte("version: 1\n"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := LoadContext(ctx, p, env(nil)); !errors.Is(err, context.Canceled) {
		t.Fatalf("load with a canceled context: %v", err)
	}
}

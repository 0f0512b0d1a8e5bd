package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/regfile"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// TestLoadRefusesFIFO: --config naming a FIFO blocked the start forever,
// past SIGTERM. So did a policy source naming one. Both are refused at once,
// naming the path.
func TestLoadRefusesFIFO(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "kernel.yaml")
	testutil.MakeFIFO(t, fifo)
	for name, load := range map[string]func() error{
		"kernel.yaml": func() error { _, err := LoadContext(context.Background(), fifo, env(nil)); return err },
		"policy":      func() error { _, err := LoadPolicy(context.Background(), fifo, ""); return err },
		"policy URL":  func() error { _, err := LoadPolicy(context.Background(), "file://"+fifo, ""); return err },
	} {
		testutil.RefusedWithout(t, name, regfile.ErrNotRegular, fifo, load)
	}
	p := filepath.Join(dir, "ok.yaml")
	os.WriteFile(p, []byte("version: 1\n"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := LoadContext(ctx, p, env(nil)); !errors.Is(err, context.Canceled) {
		t.Fatalf("load with a canceled context: %v", err)
	}
}

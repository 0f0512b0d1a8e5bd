package hushspec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/regfile"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// TestExtendsFIFORefused: `extends:` naming a FIFO blocked the load forever
// (open(2) of a FIFO waits for a writer), past SIGTERM. Only regular files
// are read now, and the error names the path.
func TestExtendsFIFORefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "base.yaml")
	testutil.MakeFIFO(t, fifo)
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
		testutil.RefusedWithout(t, name, regfile.ErrNotRegular, fifo, load)
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

package regfile

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fifo, "/dev/zero", dir} {
		_, err := ReadFile(context.Background(), p, 100)
		if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), p) {
			t.Fatalf("%s: %v", p, err)
		}
		t.Logf("%v", err)
	}
	reg := filepath.Join(dir, "f")
	os.WriteFile(reg, []byte("0123456789"), 0o600)
	b, err := ReadFile(context.Background(), reg, 4)
	if err != nil || string(b) != "01234" {
		t.Fatalf("regular file: %q %v", b, err)
	}
}

func TestReadFileObeysContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("x"), 0o600)
	if _, err := ReadFile(ctx, p, 10); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
}

package sidecar

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

// mountTmpfs mounts a tmpfs of size bytes on a fresh directory and
// unmounts it at cleanup (after everything registered later).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+itoa(size)); err != nil {
		testutil.Skip(t, "cannot mount tmpfs: "+err.Error())
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// fill writes a file until the filesystem has no room left.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			return p
		}
	}
}

// waitHealth polls the health endpoint until it answers want.
func (f *fixture) waitHealth(want int) Health {
	f.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, body := f.do("GET", config.DefaultHealthPath, nil, nil)
		var h Health
		json.Unmarshal(body, &h)
		if resp.StatusCode == want {
			return h
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("health stayed %d (%s); want %d", resp.StatusCode, body, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestHealthTurns503WhenReceiptVolumeIsFull(t *testing.T) {
	mnt := mountTmpfs(t, 4<<20)
	f := startFixture(t, func(s *config.SidecarSettings) { s.ReceiptPath = filepath.Join(mnt, "receipts.db") })
	f.waitHealth(http.StatusOK)
	if resp, _ := f.do("GET", "/pets", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("before filling: %d", resp.StatusCode)
	}
	filler := fill(t, mnt)
	h := f.waitHealth(http.StatusServiceUnavailable)
	if h.Status != "unavailable" || len(h.Problems) == 0 || h.PolicyHash == "" {
		t.Fatalf("health %+v; want unavailable saying why", h)
	}
	// While full, a request is either recorded and forwarded, or refused
	// with 503 and no receipt id: never forwarded without its receipt.
	before := len(f.upstream.Hits())
	for i := 0; i < 20; i++ {
		resp, body := f.do("GET", "/pets", nil, nil)
		id := resp.Header.Get(HeaderReceiptID)
		switch resp.StatusCode {
		case 200:
			f.stored(id)
		case http.StatusServiceUnavailable:
			if id != "" || decodeError(t, body).Error != "chio_receipt_unavailable" {
				t.Fatalf("503 with receipt id %q, body %s", id, body)
			}
			if len(f.upstream.Hits()) != before {
				t.Fatalf("a request whose receipt failed reached the upstream")
			}
		default:
			t.Fatalf("while full: %d %s", resp.StatusCode, body)
		}
		before = len(f.upstream.Hits())
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	f.waitHealth(http.StatusOK)
	if resp, _ := f.do("GET", "/pets", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("after freeing space: %d", resp.StatusCode)
	}
}

package sidecar

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// probeBytes is what the readiness probe writes next to the receipt log:
// more than one small commit needs (a few 4 KiB pages), so a volume that
// cannot take the probe cannot take the next receipts either.
const probeBytes = 64 << 10

// probeEvery bounds how often the probe touches the disk: health checks
// from several orchestrator replicas must not turn into an fsync storm.
const probeEvery = 500 * time.Millisecond

// writeProbe checks that the receipt log's directory takes a synced write.
// bbolt preallocates nothing on tmpfs and overlay filesystems, so a full
// volume shows up only when a commit needs a new page; probing before that
// turns readiness off before requests start failing.
type writeProbe struct {
	path string

	mu      sync.Mutex
	checked time.Time
	last    error
}

func newWriteProbe(logPath string) *writeProbe {
	return &writeProbe{path: filepath.Join(filepath.Dir(logPath), "."+filepath.Base(logPath)+".health-probe")}
}

func (p *writeProbe) check() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.checked.IsZero() && time.Since(p.checked) < probeEvery {
		return p.last
	}
	p.last = p.write()
	p.checked = time.Now()
	return p.last
}

var probeData = make([]byte, probeBytes)

func (p *writeProbe) write() error {
	// O_NONBLOCK: a FIFO planted at the path fails the probe (ENXIO)
	// instead of blocking the health check until a reader comes.
	f, err := os.OpenFile(p.path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return fmt.Errorf("probe write: %w", err)
	}
	defer os.Remove(p.path)
	_, werr := f.Write(probeData)
	if werr == nil {
		werr = f.Sync()
	}
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("probe write %s: %w", p.path, werr)
	}
	return nil
}

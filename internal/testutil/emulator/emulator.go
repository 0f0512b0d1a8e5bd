// Package emulator runs a local implementation of a cloud API (the object
// store emulators scripts/deps installs into .tools/) as a child process on
// a random loopback port, for tests driving the clouds' real SDKs. The
// packages fakes3, fakegcs and azurite beside it start one each.
package emulator

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// readyTimeout bounds how long an emulator may take to accept connections
// (Azurite starts a Node runtime).
const readyTimeout = 60 * time.Second

// Tool finds the emulator binary name in .tools/bin of the module root,
// where `scripts/deps emulators` (run by `make test`) installs it. A missing
// one skips t (fails it under CI=true).
func Tool(t testing.TB, name string) string {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatalf("find the module root: %v", err)
	}
	p := filepath.Join(root, ".tools", "bin", name)
	if _, err := os.Stat(p); err != nil {
		testutil.Skip(t, name+" is not installed (scripts/deps emulators installs it into .tools/bin)")
	}
	return p
}

// Proc is a running emulator.
type Proc struct {
	// Name is the emulator's, for messages.
	Name string
	// Port is the loopback port it serves on.
	Port int
	// Graceful makes Stop ask the emulator to end (SIGTERM) and wait up to
	// gracefulTimeout before killing it, for one that writes what it holds
	// to disk at shutdown and only every few seconds before (Azurite's
	// LokiJS metadata): killed, it would lose writes it acknowledged, which
	// the cloud it stands for never does. Set it before Stop is called.
	Graceful bool
	dir      string
	bin      string
	args     []string
	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	log      string
}

// Start runs bin with args(port) in dir (its working directory and log
// file's) on a free loopback port and waits until that port accepts.
func Start(name, bin, dir string, args func(port int) []string) (*Proc, error) {
	port, err := testutil.FreePort()
	if err != nil {
		return nil, err
	}
	p := &Proc{Name: name, Port: port, dir: dir, bin: bin, args: args(port), log: filepath.Join(dir, name+".log")}
	if err := p.spawn(p.bin, p.args); err != nil {
		return nil, err
	}
	if err := p.waitReady(); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

func (p *Proc) spawn(bin string, args []string) error {
	out, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	defer out.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = p.dir, out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := testutil.StartChild(cmd); err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	return nil
}

// waitReady polls the port until it accepts, the process dies, or
// readyTimeout passes.
func (p *Proc) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before serving; its log:\n%s", p.Name, p.Log())
		case <-ctx.Done():
			return fmt.Errorf("wait for %s on %s: %w; its log:\n%s", p.Name, p.Addr(), ctx.Err(), p.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Addr is host:port on loopback.
func (p *Proc) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port)) }

// Log is what the emulator printed, for a failing test.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// gracefulTimeout bounds a Graceful emulator's shutdown before it is
// killed.
const gracefulTimeout = 10 * time.Second

// Stop kills the emulator (process group) and waits for it; a Graceful one
// is asked to end first.
func (p *Proc) Stop() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	if p.Graceful {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
			return
		case <-time.After(gracefulTimeout):
		}
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// Restart starts the emulator again after Stop, with the same arguments on
// the same port (its data survives when it keeps it on disk), and waits
// until it serves. Another process may have taken the port meanwhile: the
// restart then fails, loudly.
func (p *Proc) Restart() error {
	p.Stop()
	if err := p.spawn(p.bin, p.args); err != nil {
		return err
	}
	return p.waitReady()
}

// Shared starts one emulator per test binary with start, on its first
// call; later calls return the same one (or its error). The process dies
// with the test binary (Pdeathsig); its directory is left to the OS's
// temporary directory cleaning.
type Shared[T any] struct {
	once sync.Once
	v    T
	err  error
}

// Get starts the emulator on the first call.
func (s *Shared[T]) Get(t testing.TB, start func(dir string) (T, error)) T {
	t.Helper()
	s.once.Do(func() {
		dir, err := os.MkdirTemp("", "emulator-")
		if err != nil {
			s.err = err
			return
		}
		s.v, s.err = start(dir)
	})
	if s.err != nil {
		t.Fatal(s.err)
	}
	return s.v
}

// Own starts an emulator of t's own with start, in a directory of t's; it
// is stopped when t ends.
func Own[T interface{ Stop() }](t testing.TB, start func(dir string) (T, error)) T {
	t.Helper()
	v, err := start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Stop)
	return v
}

// ClosedAddr is a loopback address nothing listens on (a port just freed):
// a store there is unreachable.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

var bucketSeq atomic.Int64

// BucketName is a name for t's bucket (or container) that every one of the
// three stores accepts (3 to 63 lowercase letters, digits and single
// dashes) and that is unique in the test binary.
func BucketName(t testing.TB) string {
	var b strings.Builder
	dash := true
	for _, r := range strings.ToLower(t.Name()) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash {
			b.WriteByte('-')
			dash = true
		}
	}
	n := strings.Trim(b.String(), "-")
	if len(n) > 50 {
		n = strings.Trim(n[:50], "-")
	}
	return fmt.Sprintf("%s-%d", n, bucketSeq.Add(1))
}

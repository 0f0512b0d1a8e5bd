package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
)

// DemoOptions configure RunDemo.
type DemoOptions struct {
	// Out receives the narration. Required.
	Out io.Writer
	// BPFFS is where bpffs is mounted when absent. Default /sys/fs/bpf.
	BPFFS string
	// Curl is the client run inside and outside the protected cgroup.
	// Default: curl from PATH.
	Curl string
}

// RunDemo shows the redirect on this machine with nothing but local servers:
// it starts a local HTTP API, protects a fresh cgroup, runs an unmodified curl
// inside it (its connection is intercepted, attributed to its process and
// forwarded), runs the same curl outside (direct), then closes the agent's
// listener and shows the protected curl fail closed. Everything it made is
// removed before it returns.
func RunDemo(ctx context.Context, opts DemoOptions) (err error) {
	if opts.BPFFS == "" {
		opts.BPFFS = "/sys/fs/bpf"
	}
	if opts.Curl == "" {
		opts.Curl = "curl"
	}
	curl, err := exec.LookPath(opts.Curl)
	if err != nil {
		return fmt.Errorf("demo needs curl: %w", err)
	}
	// The forwarder narrates from its own goroutines.
	w := &lockedWriter{w: opts.Out}
	if err := bpf.EnsureBPFFS(opts.BPFFS); err != nil {
		return err
	}
	mount, err := cgroupfs.Mount()
	if err != nil {
		return fmt.Errorf("find cgroup2: %w", err)
	}

	api, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("start local API: %w", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "hello from the local API (you asked for %s)\n", r.URL.Path)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(api)
	defer srv.Close()
	apiURL := "http://" + api.Addr().String() + "/hello"

	cgPath := filepath.Join(mount, fmt.Sprintf("chio-demo-%d", os.Getpid()))
	cgID, err := cgroupfs.Create(cgPath)
	if err != nil {
		return err
	}
	defer func() {
		if rerr := cgroupfs.Remove(cgPath); rerr != nil && err == nil {
			err = rerr
		}
	}()

	objs, err := bpf.Load(bpf.Options{})
	if err != nil {
		return err
	}
	defer objs.Close()
	if err := objs.AttachCgroup(cgPath); err != nil {
		return err
	}

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("start agent listener: %w", err)
	}
	fwd := &demoForwarder{objs: objs, out: w}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); fwd.serve(ln) }()
	defer func() { ln.Close(); wg.Wait() }()

	listen := ln.Addr().(*net.TCPAddr).AddrPort()
	if err := objs.Protect(cgID, bpf.Workload{ID: 1, Listen4: listen}); err != nil {
		return err
	}

	fmt.Fprintf(w, "chio-agent demo: eBPF connect redirect, on this machine only\n\n")
	fmt.Fprintf(w, "  local API          %s\n", apiURL)
	fmt.Fprintf(w, "  protected cgroup   %s (id %d)\n", cgPath, cgID)
	fmt.Fprintf(w, "  agent listener     %s\n\n", listen)

	dir, err := os.Open(cgPath)
	if err != nil {
		return fmt.Errorf("open cgroup: %w", err)
	}
	defer dir.Close()

	fmt.Fprintf(w, "1. curl inside the protected cgroup: its connect() is redirected to the agent\n")
	out, err := runCurl(ctx, curl, apiURL, dir)
	if err != nil {
		return fmt.Errorf("protected curl: %w", err)
	}
	fmt.Fprintf(w, "   curl printed: %s\n", out)
	if fwd.count() != 1 {
		return errors.New("protected curl was not intercepted")
	}

	fmt.Fprintf(w, "2. the same curl outside the cgroup connects directly\n")
	out, err = runCurl(ctx, curl, apiURL, nil)
	if err != nil {
		return fmt.Errorf("unprotected curl: %w", err)
	}
	fmt.Fprintf(w, "   curl printed: %s\n", out)
	if fwd.count() != 1 {
		return errors.New("unprotected curl was intercepted")
	}

	fmt.Fprintf(w, "3. the agent's listener goes away: the protected curl fails closed\n")
	ln.Close()
	wg.Wait()
	out, err = runCurl(ctx, curl, apiURL, dir)
	if err == nil {
		return fmt.Errorf("protected curl reached the API with no agent listening: %s", out)
	}
	fmt.Fprintf(w, "   curl failed: %v\n\n", err)
	fmt.Fprintf(w, "demo done: programs detached, cgroup removed\n")
	return nil
}

func runCurl(ctx context.Context, curl, url string, cgroup *os.File) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, "-sS", "--max-time", "5", url)
	if cgroup != nil {
		cgroupfs.PlaceCommand(cmd, cgroup)
	}
	out, err := cmd.CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("%w: %s", err, s)
	}
	return s, nil
}

// lockedWriter serializes writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// demoForwarder is the smallest transparent forwarder: recover the original
// destination, say who asked for it, and splice both ways.
type demoForwarder struct {
	objs *bpf.Objects
	out  io.Writer
	mu   sync.Mutex
	n    int
}

func (f *demoForwarder) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func (f *demoForwarder) serve(ln net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() { defer wg.Done(); f.handle(c.(*net.TCPConn)) }()
	}
}

func (f *demoForwarder) handle(c *net.TCPConn) {
	defer c.Close()
	cookie, err := bpf.NetnsCookie(c)
	if err != nil {
		fmt.Fprintf(f.out, "   agent: %v\n", err)
		return
	}
	orig, err := f.objs.TakeOriginal(cookie, c.RemoteAddr().(*net.TCPAddr).AddrPort())
	if err != nil {
		fmt.Fprintf(f.out, "   agent: refused: %v\n", err)
		return
	}
	f.mu.Lock()
	f.n++
	f.mu.Unlock()
	fmt.Fprintf(f.out, "   agent: intercepted %s (pid %d, uid %d) connecting to %s; forwarding\n",
		orig.Comm, orig.PID, orig.UID, orig.Dst)
	up, err := net.DialTimeout("tcp", orig.Dst.String(), 5*time.Second)
	if err != nil {
		fmt.Fprintf(f.out, "   agent: dial %s: %v\n", orig.Dst, err)
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, up)
	c.CloseWrite()
	<-done
}

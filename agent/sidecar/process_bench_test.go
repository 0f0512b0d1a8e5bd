package sidecar

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/tuning"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

// The sidecar runs next to an API as its own process. BenchmarkSidecarAdded
// measures it that way: this test binary re-executed as the sidecar (with
// the runtime set as the chio-agent binary sets it), a lean upstream and
// the client in the benchmark's process, direct and proxied requests
// interleaved.

const (
	envChild    = "CHIO_SIDECAR_BENCH_CHILD" // the work directory
	envUpstream = "CHIO_SIDECAR_BENCH_UPSTREAM"
	envMode     = "CHIO_SIDECAR_BENCH_MODE"
	envSeed     = "CHIO_SIDECAR_BENCH_SEED"
	envBare     = "CHIO_SIDECAR_BENCH_BARE" // a bare reverse proxy in front of this upstream
	// Replicas: the child's listen address and the peers it shares
	// sessions with (config.EnvSessionPeers, EnvSessionSelf and
	// EnvSessionPeerToken name the rest).
	envListen = "CHIO_SIDECAR_BENCH_LISTEN"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(envChild); dir != "" {
		os.Exit(sidecarChild(dir))
	}
	if up := os.Getenv(envBare); up != "" {
		os.Exit(bareProxyChild(up))
	}
	os.Exit(m.Run())
}

// sidecarChild serves until SIGTERM, printing "addr HOST:PORT" once ready.
func sidecarChild(dir string) int {
	tuning.Apply(os.Getenv)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	set := settingsIn(dir, os.Getenv(envUpstream), os.Getenv(envSeed))
	set.ReceiptMode = os.Getenv(envMode)
	if l := os.Getenv(envListen); l != "" {
		set.Listen = l
	}
	if peers := os.Getenv(config.EnvSessionPeers); peers != "" {
		set.Sessions.Peers = strings.Split(peers, ",")
		set.Sessions.Self = os.Getenv(config.EnvSessionSelf)
		set.Sessions.PeerToken = os.Getenv(config.EnvSessionPeerToken)
	}
	s, err := Start(ctx, Options{Settings: set, Version: "bench"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sidecar child:", err)
		return 1
	}
	fmt.Printf("addr %s\n", s.Addr())
	<-ctx.Done()
	closeCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(closeCtx); err != nil {
		fmt.Fprintln(os.Stderr, "sidecar child: close:", err)
		return 1
	}
	return 0
}

// bareProxyChild is the floor the sidecar is compared with: Go's reverse
// proxy with the sidecar's transport settings and buffer pool, in its own
// process, deciding nothing and writing no receipts.
func bareProxyChild(upstream string) int {
	tuning.Apply(os.Getenv)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	u, err := url.Parse(upstream)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bare proxy:", err)
		return 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bare proxy:", err)
		return 1
	}
	rp := &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(u); pr.SetXForwarded() },
		Transport:  &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second},
		BufferPool: &copyBuffers,
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	fmt.Printf("addr %s\n", ln.Addr())
	<-ctx.Done()
	srv.Close()
	return 0
}

// startChild runs this test binary as a child with env and returns the
// address it prints once ready; stop ends it (SIGTERM) and reports how it
// exited.
func startChild(b *testing.B, env ...string) (addr string, stop func()) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := testutil.StartChild(cmd); err != nil {
		b.Fatalf("start child: %v", err)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("child %v: %v", env, err)
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			b.Errorf("child %v did not stop on SIGTERM", env)
		}
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "addr ")
	if err != nil || !ok {
		stop()
		b.Fatalf("child %v did not start: %q %v", env, line, err)
	}
	go io.Copy(io.Discard, out)
	return addr, stop
}

// startSidecarProcess runs a sidecar in front of upstream in its own
// process and returns its base URL. At cleanup it stops the process and
// verifies the receipt log it wrote.
func startSidecarProcess(b *testing.B, upstream, mode string, env ...string) string {
	dir := b.TempDir()
	key := newKey(b)
	baseSettings(b, dir, upstream, key) // writes the policy and spec
	addr, stop := startChild(b, append([]string{envChild + "=" + dir, envUpstream + "=" + upstream, envMode + "=" + mode,
		envSeed + "=" + hex.EncodeToString(key.Seed())}, env...)...)
	b.Cleanup(func() {
		stop()
		verifyLog(b, filepath.Join(dir, "receipts.db"), ed25519.PrivateKey(key))
	})
	return "http://" + addr
}

// BenchmarkSidecarAdded reports the latency the sidecar adds, as the
// difference of quantiles of interleaved direct and proxied requests (the
// same keep-alive client, the same upstream), with the sidecar in its own
// process as deployed. A bare Go reverse proxy, also in its own process and
// interleaved with both, is the floor any Go HTTP hop pays here.
func BenchmarkSidecarAdded(b *testing.B) {
	for _, mode := range []string{"async", "sync"} {
		b.Run(mode, func(b *testing.B) {
			up := benchUpstream(b)
			base := startSidecarProcess(b, up.URL, mode)
			bareAddr, stopBare := startChild(b, envBare+"="+up.URL)
			defer stopBare()
			bare := "http://" + bareAddr
			client := &http.Client{Transport: &http.Transport{Proxy: nil}}
			defer client.CloseIdleConnections()
			// Warm the connections so no request pays a TCP handshake.
			for _, u := range []string{up.URL, bare, base} {
				benchGet(b, client, u+"/pets/1")
			}
			direct := make([]time.Duration, 0, b.N)
			floor := make([]time.Duration, 0, b.N)
			proxied := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				direct = append(direct, benchGet(b, client, up.URL+"/pets/1"))
				floor = append(floor, benchGet(b, client, bare+"/pets/1"))
				proxied = append(proxied, benchGet(b, client, base+"/pets/1"))
			}
			b.StopTimer()
			reportLatency(b, "direct-", direct)
			reportLatency(b, "sidecar-", proxied)
			b.ReportMetric(quantile(proxied, 0.50)-quantile(direct, 0.50), "added-p50-µs")
			b.ReportMetric(quantile(proxied, 0.99)-quantile(direct, 0.99), "added-p99-µs")
			b.ReportMetric(quantile(floor, 0.50)-quantile(direct, 0.50), "bare-added-p50-µs")
			b.ReportMetric(quantile(floor, 0.99)-quantile(direct, 0.99), "bare-added-p99-µs")
		})
	}
}

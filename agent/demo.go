package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

// DemoPolicy is the HushSpec policy the demo enforces.
const DemoPolicy = `hushspec: "1.0.0"
name: demo
rules:
  egress:
    allow: ["api.allowed.test"]
    block: ["forbidden.test"]
    default: block
`

// DemoOptions configure RunDemo.
type DemoOptions struct {
	// Out receives the narration. Required.
	Out io.Writer
	// Dir keeps the demo's receipt log, key and CA. Default: a temporary
	// directory, removed afterwards.
	Dir string
}

// RunDemo shows the node agent end to end on this machine alone: it serves
// an allowed API (HTTPS and HTTP, on 127.0.0.1) and a forbidden one (on
// 127.0.0.2), protects a fresh cgroup, runs unmodified curl and python3
// inside it — an allowed call, denied calls, a spoofed SNI — then verifies
// the receipt log. It needs root, curl and python3, and removes what it made.
func RunDemo(ctx context.Context, opts DemoOptions) (err error) {
	for _, tool := range []string{"curl", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("demo needs %s: %w", tool, err)
		}
	}
	w := &lockedWriter{w: opts.Out}
	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "chio-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	ca, err := newLocalCA([]string{"api.allowed.test", "forbidden.test"}, []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("127.0.0.2")})
	if err != nil {
		return err
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		return err
	}

	allowedTLS, err := demoServer(ctx, "127.0.0.1:0", "the allowed API", &ca.Cert)
	if err != nil {
		return err
	}
	allowedHTTP, err := demoServer(ctx, "127.0.0.1:0", "the allowed API", nil)
	if err != nil {
		return err
	}
	forbiddenTLS, err := demoServer(ctx, "127.0.0.2:0", "the FORBIDDEN API", &ca.Cert)
	if err != nil {
		return err
	}
	forbiddenHTTP, err := demoServer(ctx, "127.0.0.2:0", "the FORBIDDEN API", nil)
	if err != nil {
		return err
	}

	policy, err := hushspec.Parse([]byte(DemoPolicy))
	if err != nil {
		return err
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	dbPath := filepath.Join(dir, "receipts.db")
	log, err := receipts.Open(dbPath, receipts.Options{Key: key})
	if err != nil {
		return err
	}
	defer log.Close()

	mount, err := cgroupfs.Mount()
	if err != nil {
		return fmt.Errorf("find cgroup2: %w", err)
	}
	cgPath := filepath.Join(mount, fmt.Sprintf("chio-demo-%d", os.Getpid()))
	if _, err := cgroupfs.Create(cgPath); err != nil {
		return err
	}
	defer func() {
		if rerr := cgroupfs.Remove(cgPath); rerr != nil && err == nil {
			err = rerr
		}
	}()
	a, err := Start(Options{
		Policy: policy, PolicySource: "built-in demo policy", Key: key, Log: log, AttachCgroup: cgPath,
		Hosts: map[string][]netip.Addr{
			"api.allowed.test": {netip.MustParseAddr("127.0.0.1")},
			"forbidden.test":   {netip.MustParseAddr("127.0.0.2")},
		},
		OnDecision: func(d Decision) { fmt.Fprintf(w, "   %s\n", FormatDecision(d)) },
	})
	if err != nil {
		return err
	}
	defer a.Close()
	if err := a.Protect(WorkloadSpec{Name: "demo/agent", Cgroup: cgPath, Labels: map[string]string{"app": "demo"}}); err != nil {
		return err
	}
	dirFile, err := os.Open(cgPath)
	if err != nil {
		return err
	}
	defer dirFile.Close()

	fmt.Fprintf(w, "chio-agent demo: policy-enforced egress for unmodified clients, on this machine only\n\n")
	fmt.Fprintf(w, "policy     %s", indent(DemoPolicy, "           "))
	fmt.Fprintf(w, "servers    api.allowed.test = 127.0.0.1 (HTTPS :%d, HTTP :%d), forbidden.test = 127.0.0.2 (HTTPS :%d, HTTP :%d)\n",
		allowedTLS.Port(), allowedHTTP.Port(), forbiddenTLS.Port(), forbiddenHTTP.Port())
	fmt.Fprintf(w, "protected  cgroup %s: every TCP connect() goes to the agent; UDP refused (DNS goes to the agent where resolvers are configured; the demo has none)\n", cgPath)
	fmt.Fprintf(w, "receipts   %s (Ed25519, kernel key %s…)\n\n", dbPath, kernel.PublicKeyHex(key.Public().(ed25519.PublicKey))[:16])

	run := func(title, shown string, name string, args ...string) string {
		if shown == "" {
			shown = name + " " + strings.Join(args, " ")
		}
		fmt.Fprintf(w, "%s\n   $ %s\n", title, shown)
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, name, args...)
		cgroupfs.PlaceCommand(cmd, dirFile)
		out, err := cmd.CombinedOutput()
		res := strings.TrimSpace(string(out))
		if err != nil {
			res = strings.TrimSpace(res + " (" + err.Error() + ")")
		}
		fmt.Fprintf(w, "   → %s\n\n", res)
		return res
	}
	resolve := func(host string, ap netip.AddrPort) string {
		return fmt.Sprintf("%s:%d:%s", host, ap.Port(), ap.Addr())
	}
	var failures []string
	expect := func(step, got, want string) {
		if !strings.Contains(got, want) {
			failures = append(failures, fmt.Sprintf("%s: got %q, want %q in it", step, got, want))
		}
	}

	got := run("1. curl calls the allowed API over HTTPS: allowed, receipted, relayed", "", "curl", "-sS", "--cacert", caFile,
		"--resolve", resolve("api.allowed.test", allowedTLS), fmt.Sprintf("https://api.allowed.test:%d/v1/models", allowedTLS.Port()))
	expect("allowed https", got, "hello from the allowed API")

	got = run("2. curl calls the forbidden API over HTTPS: refused with a TLS access_denied alert", "", "curl", "-sS", "--cacert", caFile,
		"--resolve", resolve("forbidden.test", forbiddenTLS), fmt.Sprintf("https://forbidden.test:%d/exfiltrate", forbiddenTLS.Port()))
	expect("forbidden https", got, "alert access denied")

	got = run("3. python3 urllib calls the forbidden API over HTTP: a 403 naming the receipt",
		fmt.Sprintf("python3 -c 'urllib.request.urlopen(\"http://forbidden.test:%d/exfiltrate\")'  (Host header, dialling 127.0.0.2)", forbiddenHTTP.Port()),
		"python3", "-c", fmt.Sprintf(`
import urllib.request, urllib.error
try:
    urllib.request.urlopen(urllib.request.Request("http://127.0.0.2:%d/exfiltrate", headers={"Host": "forbidden.test"}), timeout=10)
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())`, forbiddenHTTP.Port()))
	expect("forbidden http", got, `403 {"error":"chio_access_denied"`)

	got = run("4. curl sends the allowed name (SNI) to the forbidden server's address: refused as spoofing", "", "curl", "-sS", "--cacert", caFile,
		"--resolve", resolve("api.allowed.test", forbiddenTLS), fmt.Sprintf("https://api.allowed.test:%d/", forbiddenTLS.Port()))
	expect("spoofed sni", got, "alert access denied")

	got = run("5. python3 tries QUIC (UDP 443): refused in the kernel, so it cannot go around the TCP path",
		"python3 -c 'socket.socket(AF_INET, SOCK_DGRAM).sendto(b\"quic\", (\"127.0.0.1\", 443))'", "python3", "-c", `
import socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"quic", ("127.0.0.1", 443))
    print("sent")
except PermissionError as e:
    print("refused:", e)`)
	expect("quic", got, "refused: [Errno 1] Operation not permitted")

	a.Close() // stop deciding; flush and seal the log before verifying it
	if err := log.Flush(ctx, true); err != nil {
		return err
	}
	rep, err := log.Verify(ctx, receipts.VerifyOptions{})
	if err != nil {
		return fmt.Errorf("verify receipt log: %w", err)
	}
	fmt.Fprintf(w, "6. the receipt log verifies: %d receipts, every signature and id checked; %d checkpoint(s) chained, sealing through seq %d\n",
		rep.Verified, rep.Checkpoints, rep.SealedSeq)
	if opts.Dir != "" {
		fmt.Fprintf(w, "   inspect it: chio-agent receipts list --receipts %s\n", dbPath)
	}
	if len(failures) > 0 {
		return fmt.Errorf("demo did not go as expected:\n  %s", strings.Join(failures, "\n  "))
	}
	fmt.Fprintf(w, "\ndemo done: programs detached, cgroup removed\n")
	return nil
}

// demoServer serves a one-line answer on addr, over TLS when cert is set,
// until ctx ends.
func demoServer(ctx context.Context, addr, name string, cert *tls.Certificate) (netip.AddrPort, error) {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("start demo server on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "hello from %s (%s %s)\n", name, r.Method, r.URL.Path)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); srv.Close() }()
	if cert != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}}
		go srv.ServeTLS(ln, "", "")
	} else {
		go srv.Serve(ln)
	}
	return ln.Addr().(*net.TCPAddr).AddrPort(), nil
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines, "\n"+prefix) + "\n"
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

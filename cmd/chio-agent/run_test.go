package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// binary builds chio-agent once per test run: end-to-end tests start the
// real binary, as an operator would.
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "chio-agent-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "chio-agent")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// serveBody serves body over HTTP on 127.0.0.1 until the test ends and
// returns the port. Keep-alives are off: every request is a new connection,
// so every request is a decision.
func serveBody(t *testing.T, body string) int {
	t.Helper()
	return serveBodyOn(t, "127.0.0.1:0", body)
}

// serveBodyOn is serveBody on the IPv4 address addr (a port of 0 picks one).
func serveBodyOn(t *testing.T, addr, body string) int {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, body) })}
	srv.SetKeepAlivesEnabled(false)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// daemon is one `chio-agent run` under test.
type daemon struct {
	t      *testing.T
	bin    string
	config string
	ready  string
	socket string
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan struct{} // closed once the process has been waited for
}

// logLines fails unless every line the agent wrote is a JSON object (its
// first lines too) and the lines hold each of wants.
func logLines(t *testing.T, logs string, wants ...string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("agent log line is not JSON: %q", line)
		}
	}
	for _, w := range wants {
		if !strings.Contains(logs, w) {
			t.Errorf("agent logs lack %s:\n%s", w, logs)
		}
	}
}

// syncBuffer collects the agent's output; the test reads it while the
// process may still write.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// gone says whether the agent process has exited.
func (d *daemon) gone() bool {
	select {
	case <-d.exited:
		return true
	default:
		return false
	}
}

func (d *daemon) start() {
	d.t.Helper()
	os.Remove(d.ready)
	d.logs = &syncBuffer{}
	d.cmd = exec.Command(d.bin, "run", "--config", d.config, "--ready-file", d.ready)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		d.t.Fatalf("start agent: %v", err)
	}
	d.exited = make(chan struct{})
	var waitErr error
	go func() { waitErr = d.cmd.Wait(); close(d.exited) }()
	deadline := time.After(60 * time.Second)
	for {
		if _, err := os.Stat(d.ready); err == nil {
			break
		}
		select {
		case <-d.exited:
			d.t.Fatalf("agent exited before ready: %v\n%s", waitErr, d.logs)
		case <-deadline:
			d.cmd.Process.Kill()
			d.t.Fatalf("agent not ready after 60s:\n%s", d.logs)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (d *daemon) signal(s syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(s); err != nil {
		d.t.Fatalf("signal %v: %v", s, err)
	}
}

// eventually polls ok every 20 ms for up to 10 s and fails, with the agent's
// logs, naming what never happened.
func (d *daemon) eventually(what string, ok func() bool) {
	d.t.Helper()
	for i := 0; i < 500; i++ {
		if ok() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.t.Fatalf("%s never happened; agent logs:\n%s", what, d.logs)
}

// statusError says whether the agent's status lists an error whose
// message contains s.
func (d *daemon) statusError(s string) bool {
	for _, e := range d.status().Errors {
		if strings.Contains(e.Message, s) {
			return true
		}
	}
	return false
}

func (d *daemon) status() agent.Status {
	d.t.Helper()
	out, err := exec.Command(d.bin, "status", "--json", "--status-socket", d.socket).Output()
	if err != nil {
		d.t.Fatalf("status: %v", err)
	}
	var s agent.Status
	if err := json.Unmarshal(out, &s); err != nil {
		d.t.Fatalf("status JSON: %v: %s", err, out)
	}
	return s
}

// daemonTest is what a test of the real `run` binary needs: root, curl, the
// binary, a directory, a pin directory of its own (uninstalled afterwards)
// and a signing key file.
func daemonTest(t *testing.T) (bin, dir, pinDir, keyPath string) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "curl")
	bin, dir, pinDir = binary(t), t.TempDir(), testutil.PinDir(t)
	t.Cleanup(func() { exec.Command(bin, "uninstall", "--force", "--pin-dir", pinDir).Run() })
	keyPath = filepath.Join(dir, "key")
	if _, err := kernel.GenerateKeyFile(keyPath); err != nil {
		t.Fatal(err)
	}
	return bin, dir, pinDir, keyPath
}

// newDaemon is a `run` of bin with its kernel.yaml, ready file and status
// socket in dir.
func newDaemon(t *testing.T, bin, dir string) *daemon {
	return &daemon{t: t, bin: bin, config: filepath.Join(dir, "kernel.yaml"), ready: filepath.Join(dir, "ready"), socket: filepath.Join(dir, "status.sock")}
}

// agentYAML is the start of a test agent's kernel.yaml: its policy, key,
// receipt log (db), pin directory and status socket. The caller appends the
// rest of the agent: section, indented by two spaces.
func agentYAML(policy, keyPath, db, pinDir, socket string) string {
	return fmt.Sprintf("policy: %s\nsigning_key: %s\nreceipts: {sink: \"file://%s\"}\nagent:\n  pin_dir: %s\n  status_socket: %s\n",
		policy, keyPath, db, pinDir, socket)
}

// replaceFile writes text to path by write-and-rename, as editors and
// ConfigMap updates do, so that a watcher never reads half a file.
func replaceFile(t *testing.T, path, text string, perm os.FileMode) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// curlIn asks for http://host:port/ from inside cg, host resolved to
// 127.0.0.1, and returns the HTTP status curl printed (200; 403 when the
// agent denied it; 000 when no answer came) and curl's exit status.
func curlIn(t *testing.T, cg testutil.Cgroup, host string, port int) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
		"--resolve", fmt.Sprintf("%s:%d:127.0.0.1", host, port), fmt.Sprintf("http://%s:%d/", host, port))
	cg.CommandIn(t, cmd)
	out, err := cmd.Output()
	return string(out), testutil.ExitCode(t, err)
}

// TestRunDaemonLifecycle runs the node agent as an operator would: protect a
// cgroup, kill the agent with SIGKILL (protected connections then fail
// rather than pass), restart it (it adopts the pinned state and enforcement
// resumes), reload the policy by SIGHUP and by editing the file (a bad
// policy is refused and the old one stays), and uninstall.
func TestRunDaemonLifecycle(t *testing.T) {
	bin, dir, pinDir, keyPath := daemonTest(t)
	cg := testutil.NewCgroup(t, "")
	port := serveBody(t, "upstream")
	policy := filepath.Join(dir, "policy.yaml")
	writePolicy := func(allow, block string) {
		t.Helper()
		replaceFile(t, policy, fmt.Sprintf("hushspec: \"0.1.0\"\nname: lifecycle\nrules:\n  egress:\n    allow: [%s]\n    block: [%s]\n    default: block\n", allow, block), 0o644)
	}
	writePolicy(`"api.allowed.test"`, "")
	db := filepath.Join(dir, "receipts.db")
	d := newDaemon(t, bin, dir)
	kcfg := agentYAML(policy, keyPath, db, pinDir, d.socket) + fmt.Sprintf(`  hosts: {api.allowed.test: [127.0.0.1]}
  workloads:
    - name: lifecycle
      cgroup: %s
      labels: {test: lifecycle}
`, cg.Path)
	if err := os.WriteFile(d.config, []byte(kcfg), 0o600); err != nil {
		t.Fatal(err)
	}

	curl := func() (string, int) {
		t.Helper()
		return curlIn(t, cg, "api.allowed.test", port)
	}
	// No agent yet: status says so and fails.
	if out, err := exec.Command(bin, "status", "--status-socket", d.socket).CombinedOutput(); err == nil || !strings.Contains(string(out), "no chio-agent is running") {
		t.Fatalf("status with no agent: %v, %q", err, out)
	}

	d.start()
	if out, code := curl(); code != 0 || out != "200" {
		t.Fatalf("allowed curl: exit %d, %q\n%s", code, out, d.logs)
	}
	logLines(t, d.logs.String(), `"attached and pinned the programs"`)
	s := d.status()
	// chio.c's nine hooks (dns.c's two recvmsg among them) and inbound.c's four.
	if len(s.Attachments) != 13 || len(s.Workloads) != 1 || s.Workloads[0].Name != "lifecycle" || s.Counts.Allowed != 1 || s.Policy.Name != "lifecycle" {
		t.Fatalf("status = %+v", s)
	}
	for _, a := range s.Attachments {
		if a.Adopted || !strings.HasPrefix(a.PinPath, pinDir) || a.LinkID == 0 || a.ProgID == 0 {
			t.Fatalf("fresh attachment = %+v", a)
		}
	}

	// Prometheus metrics on the root-only status socket.
	if out, err := exec.Command("curl", "-sS", "--unix-socket", d.socket, "http://agent/metrics").CombinedOutput(); err != nil ||
		!strings.Contains(string(out), `chio_agent_decisions_total{guard="HushSpecEgressGuard",verdict="allow",workload="lifecycle"} 1`) {
		t.Fatalf("metrics: %v\n%s", err, out)
	}

	// The agent holds the log; readers go through its socket.
	out, err := exec.Command(bin, "receipts", "list", "--receipts", db, "--status-socket", d.socket, "--lock-timeout", "100ms", "--json").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"workload":"lifecycle"`) || !strings.Contains(string(out), `"host":"api.allowed.test"`) {
		t.Fatalf("receipts list of the live log: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "receipts", "verify", "--receipts", db, "--status-socket", d.socket, "--lock-timeout", "100ms").CombinedOutput(); err != nil {
		t.Fatalf("receipts verify of the live log: %v\n%s", err, out)
	}
	tail := exec.Command(bin, "receipts", "tail", "-f", "-n", "1", "--json", "--interval", "50ms", "--receipts", db, "--status-socket", d.socket, "--lock-timeout", "100ms")
	tailOut, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(tailOut)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// The last receipt first: tail is following once it has printed it.
	select {
	case l := <-lines:
		if !strings.Contains(l, `"seq":1,`) {
			t.Fatalf("tail -f -n 1 printed %q first; want seq 1", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("tail -f printed nothing")
	}
	if out, code := curl(); code != 0 || out != "200" {
		t.Fatalf("second allowed curl: exit %d, %q", code, out)
	}
	select {
	case l := <-lines:
		if !strings.Contains(l, `"seq":2`) || !strings.Contains(l, `"decision":"allow"`) {
			t.Fatalf("tail -f printed %q; want the new receipt, seq 2", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("tail -f printed nothing for a new receipt")
	}
	tail.Process.Kill()
	tail.Wait()

	// SIGKILL: nothing cleans up; protected connections fail closed.
	d.signal(syscall.SIGKILL)
	d.eventually("agent gone", d.gone)
	if out, code := curl(); code != 7 {
		t.Fatalf("curl with the agent killed: exit %d, %q; want 7 (refused), never a pass", code, out)
	}

	// Restart: pinned links adopted, enforcement resumes.
	d.start()
	if out, code := curl(); code != 0 || out != "200" {
		t.Fatalf("curl after restart: exit %d, %q\n%s", code, out, d.logs)
	}
	for _, a := range d.status().Attachments {
		if !a.Adopted {
			t.Fatalf("attachment not adopted after restart: %+v", a)
		}
	}
	logLines(t, d.logs.String(), `"adopted_links":13`, `"adopted the pinned programs`)

	// SIGHUP reload to a policy that blocks the host.
	writePolicy("", `"api.allowed.test"`)
	d.signal(syscall.SIGHUP)
	d.eventually("reload to deny", func() bool { out, _ := curl(); return out == "403" })

	// A bad policy is refused; the old one stays in force.
	if err := os.WriteFile(policy, []byte("hushspec: \"0.1.0\"\nrules:\n  egress:\n    default: maybe\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	d.eventually("bad policy refused", func() bool { return d.statusError("policy reload") })
	if out, _ := curl(); out != "403" {
		t.Fatalf("after a refused reload: %q; want the old policy's 403", out)
	}
	// `chio-agent reload` does what SIGHUP does, and says what it refused.
	if out, err := exec.Command(bin, "reload", "--config", d.config).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "reload refused") || !strings.Contains(string(out), "egress.default") {
		t.Fatalf("reload of a bad policy: %v, %q; want exit 1 naming the refused policy", err, out)
	}
	if out, _ := curl(); out != "403" {
		t.Fatalf("after a refused reload command: %q; want the old policy's 403", out)
	}

	// Editing the file reloads without a signal.
	writePolicy(`"api.allowed.test"`, "")
	d.eventually("reload on file change", func() bool { out, _ := curl(); return out == "200" })
	if out, err := exec.Command(bin, "reload", "--status-socket", d.socket).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "reloaded" {
		t.Fatalf("reload of a good policy: %v, %q", err, out)
	}

	// SIGTERM: a clean stop; the pins stay (fail-closed until uninstall).
	d.signal(syscall.SIGTERM)
	d.eventually("agent stopped", d.gone)
	logLines(t, d.logs.String(), `"chio-agent stopping`)
	if _, code := curl(); code != 7 {
		t.Fatalf("curl after SIGTERM: exit %d; want 7 (pinned redirect to no listener)", code)
	}
	layoutDir := testutil.LayoutDir(t, pinDir)
	out, err = exec.Command(bin, "uninstall", "--pin-dir", pinDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "removed "+layoutDir+"/links/chio_connect4") {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin dir left after uninstall: %v", err)
	}
	if out, code := curl(); code != 0 || out != "200" {
		t.Fatalf("curl after uninstall: exit %d, %q; want a direct connection", code, out)
	}
	if out, err := exec.Command(bin, "receipts", "verify", "--receipts", db).CombinedOutput(); err != nil {
		t.Fatalf("receipts verify: %v\n%s", err, out)
	}
}

package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

// countingServer serves HTTP on 127.0.0.1 and counts the connections that
// reach it, so a test can check each one was allowed with a receipt.
func countingServer(t *testing.T) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := &http.Server{Handler: bodyHandler("counted"), ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.Add(1)
		}
	}}
	srv.SetKeepAlivesEnabled(false)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort(), &n
}

// recreate runs a child (outside every workload) that makes the cgroup at
// path, moves into it and connects to addr at once.
func recreate(t *testing.T, path string, addr netip.AddrPort) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CHIO_E2E_CHILD=recreate", "CHIO_E2E_CGROUP="+path, "CHIO_E2E_ADDR="+addr.String())
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return strings.TrimSpace(string(out)), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run child: %v", err)
	}
	return strings.TrimSpace(string(out)), 0
}

func (e *e2e) workloadStatus(name string) WorkloadStatus {
	e.t.Helper()
	for _, w := range e.agent.Status("test").Workloads {
		if w.Name == name {
			return w
		}
	}
	e.t.Fatalf("workload %s not in status", name)
	return WorkloadStatus{}
}

func (e *e2e) waitState(name string, ok func(WorkloadStatus) bool) WorkloadStatus {
	e.t.Helper()
	for i := 0; i < 1000; i++ {
		if w := e.workloadStatus(name); ok(w) {
			return w
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("workload %s never reached the wanted state: %+v", name, e.workloadStatus(name))
	return WorkloadStatus{}
}

func (e *e2e) allowsTo(dst netip.AddrPort) int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	var n int64
	for _, d := range e.decided {
		if d.Dst == dst && d.Verdict == kernel.VerdictAllow && d.ReceiptID != "" {
			n++
		}
	}
	return n
}

// TestRecreatedCgroupRefusedUntilReprotected removes a protected workload's
// cgroup and makes it again at the same path, as a systemd unit restart
// does, with a process that moves in and connects at once. Its connection
// must never reach the server without a decision: it is refused in the
// kernel (with a deny receipt) until the agent has protected the new cgroup,
// then decided again; status shows the new cgroup id.
func TestRecreatedCgroupRefusedUntilReprotected(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{})
	srv, accepts := countingServer(t)
	path, oldID := e.wl.Path, e.wl.ID
	if w := e.workloadStatus("e2e/wl"); w.State != StateProtected || w.CgroupID != oldID {
		t.Fatalf("status before = %+v; want protected, cgroup %d", w, oldID)
	}

	// The agent cannot react (its lock is held, as if it were slow): the
	// kernel alone must refuse.
	if err := cgroupfs.Remove(path); err != nil {
		t.Fatal(err)
	}
	e.agent.mu.Lock()
	out, code := recreate(t, path, srv)
	e.agent.mu.Unlock()
	if code != 4 || !strings.Contains(out, "operation not permitted") {
		t.Fatalf("connect from the recreated cgroup: exit %d, %q; want EPERM before the agent protects it", code, out)
	}
	d := e.waitDecision(func(d Decision) bool {
		return d.Dst == srv && d.Verdict == kernel.VerdictDeny && strings.Contains(d.Reason, "made again")
	})
	if d.Workload != "e2e/wl" || d.Guard != GuardDatapath {
		t.Fatalf("refusal decision = %+v", d)
	}
	e.receiptFor(d)

	// The agent protects the new cgroup (inotify, the guarded event, or
	// the periodic resync) and status shows its id.
	newID, err := cgroupfs.ID(path)
	if err != nil {
		t.Fatal(err)
	}
	e.waitState("e2e/wl", func(w WorkloadStatus) bool { return w.State == StateProtected && w.CgroupID == newID })
	pinned, err := e.agent.objs.Workloads()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pinned[oldID]; ok {
		t.Fatalf("datapath still has the removed cgroup %d: %v", oldID, pinned)
	}
	if w, ok := pinned[newID]; !ok || w.ID != e.agent.reg.byName("e2e/wl").id {
		t.Fatalf("datapath lacks the recreated cgroup %d: %v", newID, pinned)
	}
	again := testutil.Cgroup{Path: path, ID: newID}
	out, code = e.runIn(again, "curl", "-sS", "--max-time", "10", "--resolve", fmt.Sprintf("api.allowed.test:%d:127.0.0.1", srv.Port()),
		fmt.Sprintf("http://api.allowed.test:%d/after", srv.Port()))
	if code != 0 || !strings.Contains(out, "path=/after") {
		t.Fatalf("curl from the re-protected cgroup: exit %d, %q; want allowed through the proxy", code, out)
	}

	// As it happens in life: the agent free to react, a unit restarted
	// several times. Each connect is refused or decided; none reaches the
	// server without an allow receipt.
	for i := 0; i < 5; i++ {
		if err := cgroupfs.Remove(path); err != nil {
			t.Fatal(err)
		}
		out, code := recreate(t, path, srv)
		if code != 4 && !(code == 0 && strings.Contains(out, "200 OK")) {
			t.Fatalf("round %d: exit %d, %q; want refused or allowed", i, code, out)
		}
		id, err := cgroupfs.ID(path)
		if err != nil {
			t.Fatal(err)
		}
		e.waitState("e2e/wl", func(w WorkloadStatus) bool { return w.State == StateProtected && w.CgroupID == id })
	}
	if got, allowed := accepts.Load(), e.allowsTo(srv); got != allowed {
		t.Fatalf("server accepted %d connections, %d allowed with receipts: a connection got through undecided", got, allowed)
	}

	// (A directory cannot be renamed away: cgroup2 refuses rename, so
	// rmdir is the only way off the path.)
	if err := os.Rename(path, path+"-moved"); err == nil {
		t.Fatal("cgroup2 renamed a cgroup directory; the agent assumes it cannot")
	}
}

// TestRecreatedWhileAgentDownStaysRefused recreates a protected cgroup while
// no agent runs: the pinned guard refuses its connects, and the restarted
// agent protects the new cgroup under the same workload id, receipts the
// refusal made while it was down, and drops the removed cgroup's entry.
func TestRecreatedWhileAgentDownStaysRefused(t *testing.T) {
	t.Parallel()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	parent := testutil.NewCgroup(t, "")
	wl := testutil.NewCgroup(t, parent.Path)
	pinDir := testutil.PinDir(t)
	t.Cleanup(func() { bpf.Uninstall(pinDir) })
	policy, err := hushspec.Parse([]byte(e2ePolicy))
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	log, err := receipts.Open(filepath.Join(dir, "receipts.db"), receipts.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	srv, accepts := countingServer(t)
	var mu sync.Mutex
	var decided []Decision
	start := func() *Agent {
		t.Helper()
		a, err := Start(Options{Policy: policy, Key: key, Log: log, AttachCgroup: parent.Path, PinDir: pinDir,
			Hosts: map[string][]netip.Addr{"api.allowed.test": {netip.MustParseAddr("127.0.0.1")}},
			OnDecision: func(d Decision) {
				mu.Lock()
				decided = append(decided, d)
				mu.Unlock()
			}})
		if err != nil {
			t.Fatalf("start agent: %v", err)
		}
		if err := a.Protect(WorkloadSpec{Name: "down/wl", Cgroup: wl.Path}); err != nil {
			t.Fatalf("protect: %v", err)
		}
		if _, err := a.UnprotectStale(); err != nil {
			t.Fatalf("unprotect stale: %v", err)
		}
		return a
	}
	a := start()
	firstID := a.reg.byName("down/wl").id
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	if err := cgroupfs.Remove(wl.Path); err != nil {
		t.Fatal(err)
	}
	out, code := recreate(t, wl.Path, srv)
	if code != 4 {
		t.Fatalf("connect from a cgroup recreated while no agent runs: exit %d, %q; want EPERM", code, out)
	}
	newID, err := cgroupfs.ID(wl.Path)
	if err != nil {
		t.Fatal(err)
	}

	a = start()
	defer a.Close()
	w := a.reg.byName("down/wl")
	a.mu.Lock()
	state, cg := w.state, w.cgroupID
	a.mu.Unlock()
	if w.id != firstID || state != StateProtected || cg != newID {
		t.Fatalf("restarted agent: workload id %d (want %d), state %s, cgroup %d (want %d)", w.id, firstID, state, cg, newID)
	}
	pinned, err := a.objs.Workloads()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pinned[wl.ID]; ok || len(pinned) != 1 {
		t.Fatalf("pinned workloads after restart = %v; want only cgroup %d", pinned, newID)
	}
	// The refusal made while no agent ran is receipted from the pinned ring.
	for i := 0; ; i++ {
		mu.Lock()
		found := false
		for _, d := range decided {
			found = found || (d.Dst == srv && d.Verdict == kernel.VerdictDeny && d.Workload == "down/wl" && d.ReceiptID != "")
		}
		mu.Unlock()
		if found {
			break
		}
		if i == 500 {
			t.Fatalf("no receipt for the refusal made while the agent was down: %+v", decided)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := accepts.Load(); got != 0 {
		t.Fatalf("server accepted %d connections while the agent was down", got)
	}
}

// TestSetWorkloadsMovesAWorkloadWithoutAGap changes a workload's cgroup by
// reload: the new cgroup is protected under the same id, the old one is let
// go, and dropping the workload unprotects it.
func TestSetWorkloadsMovesAWorkloadWithoutAGap(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "curl")
	e := newE2E(t, e2eOptions{})
	other := testutil.NewCgroup(t, e.parent.Path)
	id := e.agent.reg.byName("e2e/wl").id
	forbidden := func(cg testutil.Cgroup) string {
		t.Helper()
		out, _ := e.runIn(cg, "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
			"--resolve", fmt.Sprintf("forbidden.test:%d:127.0.0.1", e.httpAddr.Port()), fmt.Sprintf("http://forbidden.test:%d/", e.httpAddr.Port()))
		return out
	}
	if got := forbidden(other); got != "200" {
		t.Fatalf("from a cgroup nobody protects: %q; want 200 (direct)", got)
	}
	if err := e.agent.SetWorkloads([]WorkloadSpec{{Name: "e2e/wl", Cgroup: other.Path, Labels: map[string]string{"suite": "moved"}}}); err != nil {
		t.Fatalf("set workloads: %v", err)
	}
	if w := e.workloadStatus("e2e/wl"); w.ID != id || w.CgroupID != other.ID || w.State != StateProtected || w.Labels["suite"] != "moved" {
		t.Fatalf("moved workload = %+v; want id %d on cgroup %d", w, id, other.ID)
	}
	if got := forbidden(other); got != "403" {
		t.Fatalf("from the workload's new cgroup: %q; want 403", got)
	}
	if got := forbidden(e.wl); got != "200" {
		t.Fatalf("from the workload's old cgroup: %q; want 200 (no longer this workload)", got)
	}
	if err := e.agent.SetWorkloads([]WorkloadSpec{{Name: "a", Cgroup: other.Path}, {Name: "a", Cgroup: e.wl.Path}}); err == nil {
		t.Fatal("a list naming a workload twice was accepted")
	}
	if err := e.agent.SetWorkloads([]WorkloadSpec{{Name: "e2e/other", Cgroup: e.wl.Path}}); err != nil {
		t.Fatalf("set workloads: %v", err)
	}
	if got := forbidden(other); got != "200" {
		t.Fatalf("from a dropped workload's cgroup: %q; want 200", got)
	}
	if got := forbidden(e.wl); got != "403" {
		t.Fatalf("from the added workload's cgroup: %q; want 403", got)
	}
	guards, err := e.agent.objs.Guards()
	if err != nil || len(guards) != 1 {
		t.Fatalf("guards = %v, %v; want only the added workload's", guards, err)
	}
}

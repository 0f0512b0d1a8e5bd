package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// TestUninstallRefusesWhileAgentOwnsPins is the attack of an operator (or a
// script) running `uninstall` against a live agent that serves its status
// on a non-default socket: uninstall must find the agent from the pinned
// state itself, refuse naming it, and leave protection in place. A second
// agent on the same pinned state is refused too. Once the agent stops,
// uninstall works.
func TestUninstallRefusesWhileAgentOwnsPins(t *testing.T) {
	bin, dir, pinDir, keyPath := daemonTest(t)
	cg := testutil.NewCgroup(t, "")
	port := serveBody(t, "upstream")
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("hushspec: \"0.1.0\"\nname: owned\nrules:\n  egress:\n    allow: [\"api.allowed.test\"]\n    default: block\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	config := func(name, socket string) string {
		path := filepath.Join(dir, name)
		text := agentYAML(policy, keyPath, filepath.Join(dir, name+".db"), pinDir, socket) +
			fmt.Sprintf("  workloads:\n    - name: owned\n      cgroup: %s\n", cg.Path)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	d := newDaemon(t, bin, dir)
	config(filepath.Base(d.config), d.socket)
	// blocked asks for a name the policy blocks, at the local server.
	blocked := func() string {
		t.Helper()
		out, _ := curlIn(t, cg, "blocked.test", port)
		return out
	}

	d.start()
	t.Cleanup(func() {
		if !d.gone() {
			d.cmd.Process.Kill()
			<-d.exited
		}
	})
	if got := blocked(); got != "403" {
		t.Fatalf("blocked name with the agent up: %q; want 403\n%s", got, d.logs)
	}

	// uninstall without --force, looking at the default socket as an
	// operator would: refused, naming the agent's pid.
	out, err := exec.Command(bin, "uninstall", "--pin-dir", pinDir).CombinedOutput()
	pid := strconv.Itoa(d.cmd.Process.Pid)
	if err == nil || !strings.Contains(string(out), "pid "+pid) || strings.Contains(string(out), "removed") {
		t.Fatalf("uninstall under a live agent: %v\n%s\nwant a refusal naming pid %s and nothing removed", err, out, pid)
	}
	layoutDir := testutil.LayoutDir(t, pinDir)
	for _, name := range []string{"links/chio_connect4", "maps/workloads", "progs/chio_connect4"} {
		if _, err := os.Stat(filepath.Join(layoutDir, name)); err != nil {
			t.Fatalf("after a refused uninstall, %s: %v; want it still pinned", name, err)
		}
	}
	if got := blocked(); got != "403" {
		t.Fatalf("blocked name after a refused uninstall: %q; want 403 (still protected)", got)
	}

	// A second agent on the same pinned state, on yet another socket.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err = exec.CommandContext(ctx, bin, "run", "--config", config("second.yaml", filepath.Join(dir, "second.sock"))).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") || !strings.Contains(string(out), "pid "+pid) {
		t.Fatalf("second agent on an owned pin dir: %v\n%s\nwant a refusal naming pid %s", err, out, pid)
	}
	if got := blocked(); got != "403" {
		t.Fatalf("blocked name after a refused second agent: %q; want 403", got)
	}

	// Stopped: uninstall goes through.
	d.signal(syscall.SIGTERM)
	<-d.exited
	out, err = exec.Command(bin, "uninstall", "--pin-dir", pinDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "removed "+layoutDir+"/links/chio_connect4") {
		t.Fatalf("uninstall with the agent stopped: %v\n%s", err, out)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin dir left after uninstall: %v", err)
	}
	if got := blocked(); got != "200" {
		t.Fatalf("after uninstall: %q; want a direct connection (200)", got)
	}
}

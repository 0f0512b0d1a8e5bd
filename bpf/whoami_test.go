package bpf_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// whoamiChild prints getpid(), bpf.HostIdentity's id and the NSpid line the
// host's /proc shows for the latter.
func whoamiChild() int {
	me, err := bpf.HostIdentity()
	pid := me.PID
	if err != nil {
		fmt.Println("host pid:", err)
		return 2
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		fmt.Println(err)
		return 2
	}
	nspid := ""
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "NSpid:") {
			nspid = strings.Join(strings.Fields(l)[1:], " ")
		}
	}
	fmt.Printf("getpid %d host %d nspid %s\n", os.Getpid(), pid, nspid)
	return 0
}

// identityChild prints bpf.HostIdentity's id and start time.
func identityChild() int {
	me, err := bpf.HostIdentity()
	if err != nil {
		fmt.Println("host identity:", err)
		return 2
	}
	fmt.Println(me.PID, me.Start)
	return 0
}

// HostIdentity's id is the process id the programs see: getpid() here, and in a pid
// namespace, where getpid() says 1, the id the host knows the process by.
func TestHostPIDInAPIDNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	me, err := bpf.HostIdentity()
	if err != nil {
		t.Fatalf("host identity: %v", err)
	}
	pid := me.PID
	if pid != uint32(os.Getpid()) {
		t.Fatalf("host pid = %d, getpid = %d", pid, os.Getpid())
	}
	// unshare without --mount-proc: the child still reads the host's /proc.
	cmd := exec.Command("unshare", "--pid", "--fork", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CHIO_TEST_WHOAMI=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child in a pid namespace: %v\n%s", err, out)
	}
	got := strings.TrimSpace(string(out))
	var host int
	if _, err := fmt.Sscanf(got, "getpid 1 host %d", &host); err != nil || host <= 1 {
		t.Fatalf("child said %q; want getpid 1 and another host pid", got)
	}
	// The host's /proc knows the child by that id, as 1 in its namespace.
	if want := fmt.Sprintf("getpid 1 host %d nspid %d 1", host, host); got != want {
		t.Fatalf("child said %q, want %q", got, want)
	}
}

// HostIdentity's start time is the process's: the same on every call in
// one process, another in a process started later.
func TestHostIdentityStartTime(t *testing.T) {
	testutil.RequireRoot(t)
	a, err := bpf.HostIdentity()
	if err != nil {
		t.Fatalf("host identity: %v", err)
	}
	b, err := bpf.HostIdentity()
	if err != nil {
		t.Fatalf("host identity again: %v", err)
	}
	if a != b {
		t.Fatalf("one process, two identities: %+v and %+v", a, b)
	}
	child := childIdentity(t)
	if child.PID == a.PID || child.Start <= a.Start {
		t.Fatalf("child %+v, parent %+v: want another id and a later start", child, a)
	}
}

// childIdentity runs a child that reports its identity and exits: when it
// returns, the child is gone and its id is free again.
func childIdentity(t *testing.T) bpf.Identity {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CHIO_TEST_IDENTITY=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("identity child: %v, %s", err, out)
	}
	var id bpf.Identity
	if _, err := fmt.Sscan(string(out), &id.PID, &id.Start); err != nil || id.PID == 0 || id.Start == 0 {
		t.Fatalf("identity child said %q: %v", out, err)
	}
	return id
}

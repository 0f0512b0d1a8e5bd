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

// whoamiChild prints getpid(), bpf.HostPID() and the NSpid line the host's
// /proc shows for the latter.
func whoamiChild() int {
	pid, err := bpf.HostPID()
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

// HostPID is the process id the programs see: getpid() here, and in a pid
// namespace, where getpid() says 1, the id the host knows the process by.
func TestHostPIDInAPIDNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	pid, err := bpf.HostPID()
	if err != nil {
		t.Fatalf("host pid: %v", err)
	}
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

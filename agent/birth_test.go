package agent

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/cri"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
)

// A pod's cgroup made below the birth root is refused the network, with a
// deny receipt naming its cgroup, until the agent classifies it: protected
// (then its connections are decided by the proxy) or exempt (then
// untouched, its descendants too). A cgroup outside the root is untouched,
// a cgroup made again at the same path is refused again, and the agent
// (outside the root) keeps working throughout.
func TestBirthRootRefusesUnclassifiedWithReceipts(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3", "curl")
	e := newE2E(t, e2eOptions{})
	root := testutil.NewCgroup(t, e.parent.Path)
	if err := e.agent.SetBirthRoot(root.Path); err != nil {
		t.Fatalf("set birth root: %v", err)
	}
	nothing := func() int { // a loopback port where nothing listens
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port
	}()
	try := func(cg testutil.Cgroup) (string, int) {
		t.Helper()
		return e.runIn(cg, "python3", "-c", connectScript, "tcp", "127.0.0.1", strconv.Itoa(nothing))
	}
	refused := func(name string, cg testutil.Cgroup) {
		t.Helper()
		if out, code := try(cg); code != 5 || !strings.HasPrefix(out, "socket:") {
			t.Fatalf("%s: exit %d, %q; want socket() refused with EPERM", name, code, out)
		}
		d := e.waitDecision(func(d Decision) bool {
			return d.Workload == unclassifiedName && strings.Contains(d.Reason, fmt.Sprintf("cgroup %d is below a birth root and not classified", cg.ID))
		})
		if d.Verdict != kernel.VerdictDeny || d.Guard != GuardDatapath || d.Comm != "python3" || !strings.HasPrefix(d.Reason, "socket refused") {
			t.Fatalf("%s: decision = %+v", name, d)
		}
		raw := e.verifiedReceipt(d)
		rel := strings.TrimPrefix(cg.Path, mustMount(t))
		for _, want := range []string{`"verdict":"deny"`, `"tool_name":"socket"`, `"socket":{"family":"inet","protocol":6,"type":"stream"}`,
			`"name":"unclassified"`, rel, "not classified yet"} {
			if !strings.Contains(raw, want) {
				t.Fatalf("%s: receipt lacks %s: %s", name, want, raw)
			}
		}
	}
	untouched := func(name string, cg testutil.Cgroup) {
		t.Helper()
		if out, code := try(cg); code != 6 || !strings.Contains(out, "refused") {
			t.Fatalf("%s: exit %d, %q; want a direct connect, refused by the port", name, code, out)
		}
	}

	pod := testutil.NewCgroup(t, root.Path)
	refused("fresh pod", pod)
	untouched("outside the root", testutil.NewCgroup(t, e.parent.Path))

	// Protected: decided by the proxy; the agent dials upstream from
	// outside the root.
	if err := e.agent.Protect(WorkloadSpec{Name: "birth/pod", Cgroup: pod.Path}); err != nil {
		t.Fatal(err)
	}
	out, code := e.runIn(pod, "curl", "-sS", "--max-time", "10",
		"--resolve", fmt.Sprintf("api.allowed.test:%d:127.0.0.1", e.httpAddr.Port()),
		fmt.Sprintf("http://api.allowed.test:%d/born", e.httpAddr.Port()))
	if code != 0 || !strings.HasPrefix(out, "plain-api host=api.allowed.test") {
		t.Fatalf("protected pod's curl: exit %d, %q; want the allowed API through the proxy", code, out)
	}
	if d := e.waitDecision(func(d Decision) bool { return d.Workload == "birth/pod" }); d.Verdict != kernel.VerdictAllow {
		t.Fatalf("protected pod's decision = %+v", d)
	}

	// Exempt: the pod and its containers' cgroups are untouched.
	other := testutil.NewCgroup(t, root.Path)
	grandchild := testutil.NewCgroup(t, testutil.NewCgroup(t, other.Path).Path)
	if err := e.agent.Exempt(other.Path); err != nil {
		t.Fatal(err)
	}
	untouched("exempt pod", other)
	untouched("grandchild of the exempt pod", grandchild)
	st, err := e.agent.Birth()
	if err != nil || len(st.Roots) != 1 || st.Roots[0] != root.Path || len(st.Exempt) != 1 || st.Exempt[0] != other.Path {
		t.Fatalf("birth status = %+v, %v; want root %s, exempt %s", st, err, root.Path, other.Path)
	}

	// Made again at the same path: new, refused again.
	if err := cgroupfs.RemoveTree(other.Path); err != nil {
		t.Fatal(err)
	}
	id, err := cgroupfs.Create(other.Path)
	if err != nil {
		t.Fatal(err)
	}
	refused("exempt pod made again", testutil.Cgroup{Path: other.Path, ID: id})

	// Every refusal reported was receipted.
	rs, err := e.agent.Refusals()
	if err != nil || rs.Unreceipted != 0 || rs.Lost != 0 {
		t.Fatalf("refusals = %+v, %v; want none unreceipted or lost", rs, err)
	}
	if err := e.agent.Exempt(filepath.Join(root.Path, "no-such-pod")); err == nil {
		t.Fatal("exempting a missing cgroup succeeded")
	}
}

func mustMount(t *testing.T) string {
	t.Helper()
	mnt, err := cgroupfs.Mount()
	if err != nil {
		t.Fatal(err)
	}
	return mnt
}

// The agent's own cgroup is exempted when it is below the pods' root (so
// that a root pinned by an earlier run never refuses the agent's own
// sockets), and only then: not when it is the root itself (the root's own
// processes are never refused; exempting it would exempt every pod), nor
// when it is elsewhere.
func TestBirthExemptSelf(t *testing.T) {
	e := newE2E(t, e2eOptions{})
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	rel, err := cri.ParseProcCgroup(strings.NewReader(string(self)))
	if err != nil {
		t.Fatal(err)
	}
	own := cri.Abs(mustMount(t), rel)
	exempt := func() []string {
		t.Helper()
		st, err := e.agent.Birth()
		if err != nil {
			t.Fatal(err)
		}
		return st.Exempt
	}
	for _, root := range []string{own, e.parent.Path} {
		if err := e.agent.exemptSelf(root); err != nil {
			t.Fatalf("exempt self below %s: %v", root, err)
		}
		if ex := exempt(); len(ex) != 0 {
			t.Fatalf("root %s, agent in %s: exempt %v, want none", root, own, ex)
		}
	}
	if own == mustMount(t) {
		return // in the root cgroup: nothing is above the agent
	}
	if err := e.agent.exemptSelf(filepath.Dir(own)); err != nil {
		t.Fatal(err)
	}
	if ex := exempt(); len(ex) != 1 || ex[0] != own {
		t.Fatalf("root above the agent's cgroup %s: exempt %v", own, ex)
	}
}

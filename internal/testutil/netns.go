package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"
)

// NetNS is a named network namespace made by a test (ip netns add), with its
// loopback up. Traffic inside it never leaves the machine.
type NetNS struct {
	Name string
	Path string // /run/netns/NAME
}

// NewNetNS creates a network namespace and deletes it in t.Cleanup.
func NewNetNS(t testing.TB) NetNS {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		Skip(t, "ip (iproute2) is not installed")
	}
	var b [4]byte
	rand.Read(b[:])
	n := NetNS{Name: "chio-t-" + hex.EncodeToString(b[:])}
	n.Path = "/run/netns/" + n.Name
	IP(t, "netns", "add", n.Name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	IP(t, "-n", n.Name, "link", "set", "lo", "up")
	return n
}

// NewPingNetNS is NewNetNS where every group may open ping sockets
// (net.ipv4.ping_group_range, which governs ICMPv6 too), so that an
// unprivileged workload can try the ping sockets the programs must refuse;
// the host's setting is never touched.
func NewPingNetNS(t testing.TB) NetNS {
	t.Helper()
	ns := NewNetNS(t)
	if out, err := exec.Command("ip", "netns", "exec", ns.Name, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647").CombinedOutput(); err != nil {
		t.Fatalf("allow ping sockets in %s: %v: %s", ns.Name, err, out)
	}
	return ns
}

// IP runs ip(8) with args and fails the test on error.
func IP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Veth connects two test namespaces with a veth pair addressed aAddr and
// bAddr (CIDR notation, e.g. 10.213.7.1/30); the pair goes away with them.
func Veth(t testing.TB, a, b NetNS, aAddr, bAddr string) {
	t.Helper()
	var r [3]byte
	rand.Read(r[:])
	an, bn := "cva"+hex.EncodeToString(r[:]), "cvb"+hex.EncodeToString(r[:])
	IP(t, "link", "add", an, "netns", a.Name, "type", "veth", "peer", "name", bn, "netns", b.Name)
	IP(t, "-n", a.Name, "addr", "add", aAddr, "dev", an)
	IP(t, "-n", b.Name, "addr", "add", bAddr, "dev", bn)
	IP(t, "-n", a.Name, "link", "set", an, "up")
	IP(t, "-n", b.Name, "link", "set", bn, "up")
}

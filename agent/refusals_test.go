package agent

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/receipts"
)

// socketScript tries socket(family, type, proto) as uid (0: stay root) and
// sends an ICMP echo request to dst with it. Exit 0: sent; 5: socket()
// refused with EPERM; 6: socket() failed otherwise; 7: sendto failed.
const socketScript = `
import os, socket, sys
fam, typ, proto, dst, uid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
if uid:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
try:
    s = socket.socket(fam, typ, proto)
except PermissionError as e:
    print("socket:", e); sys.exit(5)
except OSError as e:
    print("socket:", e); sys.exit(6)
msg = bytes([128 if fam == socket.AF_INET6 else 8, 0, 0, 0, 0, 1, 0, 1])
try:
    s.sendto(msg, (dst, 0))
except OSError as e:
    print("sendto:", e); sys.exit(7)
print("sent")
`

// verifiedReceipt returns the stored receipt of d after checking that it
// verifies under the agent's key.
func (e *e2e) verifiedReceipt(d Decision) string {
	e.t.Helper()
	raw := e.receiptFor(d)
	res, err := kernel.Verifier{TrustedKeys: []ed25519.PublicKey{e.key.Public().(ed25519.PublicKey)}}.VerifyJSON([]byte(raw))
	if err != nil || !res.OK {
		e.t.Fatalf("receipt does not verify: %+v %v\n%s", res, err, raw)
	}
	return raw
}

// Ping sockets (an unprivileged workload where ping_group_range allows
// them) and raw sockets (a root workload) send to any address with no
// connect or sendmsg hook run: they are refused at socket(), each with a
// deny receipt that verifies.
func TestICMPAndRawSocketsRefusedWithReceipts(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3", "ip")
	ns := testutil.NewPingNetNS(t)
	e := newE2E(t, e2eOptions{netns: ns.Path})
	plain := testutil.NewCgroup(t, e.parent.Path)
	const AF_INET, AF_INET6, DGRAM, RAW, ICMP, ICMPV6 = 2, 10, 2, 3, 1, 58
	for _, c := range []struct {
		name               string
		family, typ, proto int
		dst                string
		uid                int
		socket, transport  string
	}{
		{"ping4-unprivileged", AF_INET, DGRAM, ICMP, "127.0.0.1", 65534, `{"family":"inet","protocol":1,"type":"dgram"}`, "icmp"},
		{"ping6-unprivileged", AF_INET6, DGRAM, ICMPV6, "::1", 65534, `{"family":"inet6","protocol":58,"type":"dgram"}`, "icmpv6"},
		{"raw4-root", AF_INET, RAW, ICMP, "127.0.0.1", 0, `{"family":"inet","protocol":1,"type":"raw"}`, "icmp"},
		{"raw6-root", AF_INET6, RAW, ICMPV6, "::1", 0, `{"family":"inet6","protocol":58,"type":"raw"}`, "icmpv6"},
	} {
		args := []string{"netns", "exec", ns.Name, "python3", "-c", socketScript,
			strconv.Itoa(c.family), strconv.Itoa(c.typ), strconv.Itoa(c.proto), c.dst, strconv.Itoa(c.uid)}
		// Unprotected, the same process sends its echo request.
		if out, code := e.runIn(plain, "ip", args...); code != 0 {
			t.Fatalf("%s unprotected: exit %d, %q; want sent", c.name, code, out)
		}
		out, code := e.run("ip", args...)
		if code != 5 {
			t.Fatalf("%s protected: exit %d, %q; want socket() refused (EPERM)", c.name, code, out)
		}
		call := fmt.Sprintf("socket(%s, %s, %s)", map[int]string{AF_INET: "inet", AF_INET6: "inet6"}[c.family],
			map[int]string{DGRAM: "dgram", RAW: "raw"}[c.typ], c.transport)
		d := e.waitDecision(func(d Decision) bool { return strings.HasPrefix(d.Reason, call) })
		if d.Verdict != kernel.VerdictDeny || d.Guard != GuardDatapath || d.Comm != "python3" {
			t.Fatalf("%s: decision = %+v", c.name, d)
		}
		raw := e.verifiedReceipt(d)
		for _, want := range []string{`"tool_name":"socket"`, `"socket":` + c.socket, `"transport":"` + c.transport + `"`,
			`"verdict":"deny"`, fmt.Sprintf(`"uid":%d`, c.uid)} {
			if !strings.Contains(raw, want) {
				t.Errorf("%s: receipt lacks %s: %s", c.name, want, raw)
			}
		}
	}
}

// connectScript makes a socket of argv[1] (tcp, udp or icmp) and connects
// it to argv[2] (an address) port argv[3]. A ping socket is made first and
// the process then moves itself into the protected cgroup through fd 3, its
// cgroup.procs (a socket made before its workload was protected); TCP and
// UDP sockets are made where the process runs, as a container's first
// process would. Exit 0: connected; 5: socket() or connect() refused with
// EPERM (the output says which); 6: another error (e.g. nothing listens).
const connectScript = `
import os, socket, sys
kind, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
if kind == "icmp":
    s = socket.socket(fam, socket.SOCK_DGRAM, socket.IPPROTO_ICMP if fam == socket.AF_INET else socket.IPPROTO_ICMPV6)
    os.write(3, str(os.getpid()).encode())
else:
    try:
        s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    except PermissionError as e:
        print("socket:", e); sys.exit(5)
try:
    s.connect((dst, port))
except PermissionError as e:
    print("connect:", e); sys.exit(5)
except OSError as e:
    print("connect:", e); sys.exit(6)
print("connected")
`

// A connect to port 0 (TCP, UDP, or ICMP over a ping socket made before
// protection) is refused in the kernel, and its deny receipt is written and
// verifies (it used to fail: "destination port 0").
func TestPortZeroRefusedWithReceipt(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3", "ip")
	ns := testutil.NewPingNetNS(t)
	e := newE2E(t, e2eOptions{netns: ns.Path})
	plain := testutil.NewCgroup(t, e.parent.Path)
	for _, c := range []struct{ kind, dst, transport string }{
		{"tcp", "127.0.0.1", "tcp"},
		{"tcp", "::1", "tcp"},
		{"udp", "127.0.0.1", "udp"},
		{"udp", "::1", "udp"},
		{"icmp", "127.0.0.1", "icmp"},
		{"icmp", "::1", "icmpv6"},
	} {
		cmd := exec.Command("ip", "netns", "exec", ns.Name, "python3", "-c", connectScript, c.kind, c.dst, "0")
		if c.kind == "icmp" {
			// It moves itself in after making its socket.
			procs, err := os.OpenFile(filepath.Join(e.wl.Path, "cgroup.procs"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer procs.Close()
			cmd.ExtraFiles = []*os.File{procs}
			plain.CommandIn(t, cmd)
		} else {
			e.wl.CommandIn(t, cmd)
		}
		outb, err := cmd.CombinedOutput()
		out, code := strings.TrimSpace(string(outb)), cmd.ProcessState.ExitCode()
		if err != nil && code < 0 {
			t.Fatalf("run: %v", err)
		}
		if code != 5 {
			t.Fatalf("connect %s [%s]:0: exit %d, %q; want refused (EPERM)", c.kind, c.dst, code, out)
		}
		d := e.waitDecision(func(d Decision) bool {
			return d.Transport == c.transport && d.Dst.Port() == 0 && d.Dst.Addr().String() == c.dst
		})
		if d.Verdict != kernel.VerdictDeny || d.Err != "" {
			t.Fatalf("%s [%s]:0: decision = %+v; want a deny with its receipt", c.kind, c.dst, d)
		}
		raw := e.verifiedReceipt(d)
		for _, want := range []string{`"tool_name":"connect"`, `"port":0`, `"ip":"` + c.dst + `"`, `"transport":"` + c.transport + `"`} {
			if !strings.Contains(raw, want) {
				t.Errorf("%s [%s]:0: receipt lacks %s: %s", c.kind, c.dst, want, raw)
			}
		}
	}
}

// floodScript sends one UDP datagram to each of n distinct loopback
// destinations (127.1.x.y and 127.2.x.y, port p) and prints how many were
// refused with EPERM.
const floodScript = `
import socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
refused = 0
for i in range(n):
    try:
        s.sendto(b"x", ("127.%d.%d.%d" % (1 + (i >> 16), (i >> 8) & 255, i & 255), port))
    except PermissionError:
        refused += 1
print(refused)
`

// A flood of UDP to 20,000 distinct destinations overflows the ring
// buffer; every refusal is still accounted for: the receipts' counts plus
// the refusals the kernel counted as lost equal the attempts, exactly, and
// status and the metrics show the loss.
func TestEveryKernelRefusalAccounted(t *testing.T) {
	t.Parallel()
	testutil.RequireTools(t, "python3")
	e := newE2E(t, e2eOptions{})
	const n = 20000
	port := 20000 + int(randUint16()%20000)
	out, code := e.run("python3", "-c", floodScript, strconv.Itoa(n), strconv.Itoa(port))
	if code != 0 || out != strconv.Itoa(n) {
		t.Fatalf("flood: exit %d, %q; want %d refused", code, out, n)
	}
	st, err := e.agent.Refusals()
	if err != nil {
		t.Fatalf("refusals: %v", err)
	}
	if st.Refused != n {
		t.Fatalf("kernel counted %d refusals, want %d", st.Refused, n)
	}
	// The metrics and status say the same.
	mfs, err := e.agent.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	metric := func(name string) float64 {
		for _, mf := range mfs {
			if mf.GetName() == name {
				return counterValue(mf.GetMetric()[0])
			}
		}
		t.Fatalf("no metric %s", name)
		return 0
	}
	if got := metric("chio_agent_kernel_refusals_total"); got != n {
		t.Errorf("chio_agent_kernel_refusals_total = %v, want %d", got, n)
	}
	if got := metric("chio_agent_kernel_refusals_lost_total"); got != float64(st.Lost) {
		t.Errorf("chio_agent_kernel_refusals_lost_total = %v, status says %d", got, st.Lost)
	}
	if s := e.agent.Status("test"); s.Refusals.Refused != n || s.Refusals.Lost != st.Lost {
		t.Errorf("status refusals = %+v; want %d refused, %d lost", s.Refusals, n, st.Lost)
	}
	// Stopping the agent receipts what is still in the ring or pending.
	if err := e.agent.Close(); err != nil {
		t.Fatalf("close agent: %v", err)
	}
	sum, receiptsN := uint64(0), 0
	err = e.log.Scan(context.Background(), receipts.Filter{Workload: "e2e/wl"}, func(en receipts.Entry) error {
		var r struct {
			Action struct {
				Parameters struct {
					Transport string `json:"transport"`
					Port      int    `json:"port"`
				} `json:"parameters"`
			} `json:"action"`
			Metadata struct {
				Attempts uint64 `json:"attempts"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(en.Receipt, &r); err != nil {
			return err
		}
		if r.Action.Parameters.Transport != "udp" || r.Action.Parameters.Port != port || en.Decision != "deny" {
			return fmt.Errorf("unexpected receipt %s", en.Receipt)
		}
		receiptsN++
		sum += max(r.Metadata.Attempts, 1)
		return nil
	})
	if err != nil {
		t.Fatalf("scan receipts: %v", err)
	}
	t.Logf("%d refusals: %d receipts standing for %d, %d lost (ring full %d times, map full %d times)",
		n, receiptsN, sum, st.Lost, st.RingFull, st.MapFull)
	if sum+st.Lost != n {
		t.Fatalf("receipts stand for %d refusals and %d were lost: %d, want exactly %d", sum, st.Lost, sum+st.Lost, n)
	}
}

func counterValue(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

func randUint16() uint16 {
	var b [2]byte
	f, err := os.Open("/dev/urandom")
	if err == nil {
		f.Read(b[:])
		f.Close()
	}
	return uint16(b[0])<<8 | uint16(b[1])
}

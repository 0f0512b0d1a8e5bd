package agent

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/receipts"
)

// sinkServer counts the connections it accepts and reports the bytes each
// one carried once it ends: what an upstream learns of a connection the
// agent dialled and then refused.
type sinkServer struct {
	ended chan int64 // the bytes of each connection, when it ends
}

func serveSink(t *testing.T, addr string) (*sinkServer, string) {
	t.Helper()
	s := &sinkServer{ended: make(chan int64, 16)}
	at, _ := testutil.ServeTCP(t, "tcp4", addr, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		s.ended <- n
	})
	return s, at.String()
}

// connections returns the byte counts of the connections that ended: it
// waits up to first for one, then a moment more for any other.
func (s *sinkServer) connections(first time.Duration) []int64 {
	var out []int64
	deadline := time.After(first)
	for {
		select {
		case n := <-s.ended:
			out = append(out, n)
			if len(out) == 1 {
				deadline = time.After(300 * time.Millisecond)
			}
		case <-deadline:
			return out
		}
	}
}

// lateDelay is how long the late-http attack waits between its connect and
// its request: a slow client, for which the agent dials early.
const lateDelay = 500 * time.Millisecond

// attackLateHTTP is http-raw by a client that connects, then takes
// lateDelay before it sends CHIO_E2E_DATA.
func attackLateHTTP() (string, error) {
	fd, sa, outcome, err := openTarget(unix.IPPROTO_TCP)
	if fd < 0 {
		return outcome, err
	}
	if err := connect(fd, sa); err != nil {
		unix.Close(fd)
		return refused(err), nil
	}
	time.Sleep(lateDelay)
	if _, err := write(fd, payload()); err != nil {
		unix.Close(fd)
		return refused(err), nil
	}
	return answer(fd), nil
}

// TestAttackPreDial: the agent dials upstream before a connection's first
// bytes (when the client has sent none yet at accept) only where the
// workload could reach that destination anyway under a name it may send
// (kernel.PreDial). An allowed name sent to an address no
// name owns causes no dial at all: the address's listener sees no
// connection. A forbidden name sent to an address an allowed name owns is
// refused with a receipt, and the upstream dialled early gets not one byte
// (it is reset). An allowed request to that address goes through the early
// connection: one connection upstream, not two. In both receipt modes.
func TestAttackPreDial(t *testing.T) {
	for _, mode := range []receipts.Mode{receipts.ModeSync, receipts.ModeAsync} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			e := newE2E(t, e2eOptions{mode: mode})
			// denied waits for the refusal of a connection to dst and its
			// receipt (in async mode, its id: the log verifies at the end).
			denied := func(before int, what string, uid int, dst netip.AddrPort) Decision {
				t.Helper()
				if mode == receipts.ModeSync {
					return e.deniedSince(before, what, uid, dst)
				}
				d := e.waitDecisionSince(before, func(d Decision) bool { return d.Dst == dst })
				if d.Verdict != kernel.VerdictDeny || d.ReceiptID == "" || d.Err != "" {
					t.Fatalf("%s as uid %d: decision = %+v; want a deny with a receipt", what, uid, d)
				}
				return d
			}
			// 127.0.0.3: no name owns it, and the policy has no pattern for
			// it (default block).
			for i, c := range []struct{ attack, env string }{
				{"late-http", "CHIO_E2E_DATA=" + allowedGet},
				{"http-raw", "CHIO_E2E_DATA=" + allowedGet},
				{"tls", "CHIO_E2E_SNI=api.allowed.test"},
			} {
				uid := attackUIDs[i%len(attackUIDs)]
				trap := serveVhost(t, "tcp4", "127.0.0.3:0", true)
				before := len(e.decisions())
				out := e.attack(uid, c.attack, "CHIO_E2E_ADDR="+trap.addr.String(), c.env)
				d := denied(before, "an allowed name to an address no name owns", uid, trap.addr)
				if d.Guard != GuardAntiSpoof {
					t.Fatalf("%s as uid %d: decision %+v; want a refusal by %s", c.attack, uid, d, GuardAntiSpoof)
				}
				mustNotReach(t, c.attack+" naming api.allowed.test to 127.0.0.3", uid, out, trap)
			}

			// 127.0.0.1 is api.allowed.test's (agent.hosts): dialled early
			// for a client that has sent nothing at accept (late: exactly
			// one connection upstream, the control), perhaps for one that
			// sends at once. Either way not one byte reaches it.
			sink, sinkAddr := serveSink(t, "127.0.0.1:0")
			for i, c := range []struct {
				attack, env, guard string
				late               bool
			}{
				{"late-http", "CHIO_E2E_DATA=GET /secret HTTP/1.1\r\nHost: forbidden.test\r\nConnection: close\r\n\r\n", kernel.GuardEgressPolicy, true},
				{"late-http", "CHIO_E2E_DATA=GET /secret HTTP/1.1\r\nHost: api.allowed.test\r\nHost: forbidden.test\r\n\r\n", "", true},
				{"late-http", "CHIO_E2E_DATA=\x16\x03\x01 not a handshake", GuardProtocol, true},
				{"http-raw", "CHIO_E2E_DATA=GET /secret HTTP/1.1\r\nHost: forbidden.test\r\nConnection: close\r\n\r\n", kernel.GuardEgressPolicy, false},
				{"tls", "CHIO_E2E_SNI=forbidden.test", kernel.GuardEgressPolicy, false},
			} {
				uid := attackUIDs[i%len(attackUIDs)]
				before := len(e.decisions())
				e.attack(uid, c.attack, "CHIO_E2E_ADDR="+sinkAddr, c.env)
				d := denied(before, "a forbidden name to an allowed name's address", uid, netip.MustParseAddrPort(sinkAddr))
				if c.guard != "" && d.Guard != c.guard {
					t.Fatalf("%s %q as uid %d: decision %+v; want a refusal by %s", c.attack, c.env, uid, d, c.guard)
				}
				conns := sink.connections(5 * time.Second)
				if c.late && len(conns) != 1 || len(conns) > 1 {
					t.Fatalf("%s %q as uid %d: %d connections upstream; want 1 if late, else at most 1", c.attack, c.env, uid, len(conns))
				}
				for _, n := range conns {
					if n != 0 {
						t.Fatalf("%s %q as uid %d: %d bytes reached the upstream of a refused connection", c.attack, c.env, uid, n)
					}
				}
			}

			// An allowed request to an early-dialled address: one upstream
			// connection, the request served.
			shared := serveVhost(t, "tcp4", "127.0.0.1:0", false)
			before := len(e.decisions())
			out := e.attack(0, "late-http", "CHIO_E2E_ADDR="+shared.addr.String(), "CHIO_E2E_DATA="+allowedGet)
			if !strings.Contains(out, "allowed-content host=api.allowed.test") {
				t.Fatalf("allowed request: %q", out)
			}
			d := e.waitDecisionSince(before, func(d Decision) bool { return d.Dst == shared.addr })
			if d.Verdict != kernel.VerdictAllow || d.ReceiptID == "" || d.Err != "" {
				t.Fatalf("allowed request: decision %+v", d)
			}
			if mode == receipts.ModeSync {
				e.verifiedReceipt(d)
			}
			if n := shared.accepted.Load(); n != 1 {
				t.Fatalf("allowed request: the upstream accepted %d connections; want 1 (the early dial, used)", n)
			}
		})
	}
}

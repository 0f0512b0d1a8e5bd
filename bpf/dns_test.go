package bpf_test

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// dnsChild sends one datagram to addr from an unconnected socket and prints
// the source and payload of the answer: "from=ADDR data=PAYLOAD", or
// "noanswer".
func dnsChild(addr string) int {
	dst := netip.MustParseAddrPort(addr)
	c, err := net.ListenUDP("udp", nil)
	if err != nil {
		fmt.Println("listen-error", err)
		return 2
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort([]byte("query"), dst); err != nil {
		fmt.Println("sendto-error", err)
		return 2
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 512)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		fmt.Println("noanswer")
		return 0
	}
	if err != nil {
		fmt.Println("recvfrom-error", err)
		return 2
	}
	fmt.Printf("from=%s data=%s\n", netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), buf[:n])
	return 0
}

func init() {
	if addr := os.Getenv("CHIO_TEST_DNS"); addr != "" {
		os.Exit(dnsChild(addr))
	}
}

// TestDNSRedirectedToTheDNSListener: with a DNS listener, a protected
// workload's UDP and TCP to port 53 of a configured resolver go to the
// listener, not the resolver (the allowlist no longer lets it through);
// the UDP answer's source is the resolver's address; TCP's original is the
// resolver.
func TestDNSRedirectedToTheDNSListener(t *testing.T) {
	env := newRedirectEnv(t)
	var b [2]byte
	rand.Read(b[:])
	trap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 200, b[0], 1 + b[1]%250}), 53)
	tc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(trap))
	if err != nil {
		t.Fatalf("trap resolver: %v", err)
	}
	defer tc.Close()
	var reached atomic.Int32
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := tc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			reached.Add(1)
			tc.WriteToUDPAddrPort([]byte("from-the-resolver"), from)
		}
	}()
	if err := env.objs.SetResolvers([]netip.AddrPort{trap}); err != nil {
		t.Fatal(err)
	}
	// The DNS listener: TCP (answering with the original) and UDP on one port.
	dnsTCP := env.listen(t, "tcp4", "127.0.0.1:0")
	dnsUDP, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(dnsTCP))
	if err != nil {
		t.Fatalf("DNS listener: %v", err)
	}
	defer dnsUDP.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := dnsUDP.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			dnsUDP.WriteToUDPAddrPort(append([]byte("answer-to-"), buf[:n]...), from)
		}
	}()
	ws, err := env.objs.Workloads()
	if err != nil {
		t.Fatal(err)
	}
	w := ws[env.protected.ID]
	w.DNSPort4 = dnsTCP.Port()
	if err := env.objs.Protect(env.protected.ID, w); err != nil {
		t.Fatalf("protect with a DNS listener: %v", err)
	}

	if out, code, _ := runChild(t, env.protected, []string{"CHIO_TEST_DNS=" + trap.String()}); code != 0 || out != "from="+trap.String()+" data=answer-to-query" {
		t.Errorf("UDP DNS: exit %d, %q; want the listener's answer from %s", code, out, trap)
	}
	if out, code, _ := runIn(t, env.protected, trap.String()); code != 0 || out != "redirected "+trap.String() {
		t.Errorf("TCP DNS: exit %d, %q; want redirected to the DNS listener", code, out)
	}
	// UDP to the resolver's other port: refused, allowlist or not.
	other := netip.AddrPortFrom(trap.Addr(), 5353)
	if out, code, _ := runUDPIn(t, env.protected, other.String()); code != 4 {
		t.Errorf("UDP to %s: exit %d, %q; want refused", other, code, out)
	}
	// An unprotected process still reaches the resolver itself.
	if out, code, _ := runChild(t, env.plain, []string{"CHIO_TEST_DNS=" + trap.String()}); code != 0 || out != "from="+trap.String()+" data=from-the-resolver" {
		t.Errorf("unprotected DNS: exit %d, %q", code, out)
	}
	// (The resolver counted the datagram before answering it.)
	if n := reached.Load(); n != 1 {
		t.Errorf("the resolver got %d datagrams, want 1 (the unprotected one's)", n)
	}
}

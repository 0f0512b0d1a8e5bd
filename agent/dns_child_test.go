package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// childDNS is a DNS client run inside a protected workload (CHIO_E2E_CHILD=dns):
// it sends one message to CHIO_DNS_ADDR by CHIO_DNS_MODE and prints what
// came back:
//
//	answer from=ADDR name=NAME   an answer (from: the source the socket saw)
//	noanswer                     nothing within 3 s
//	closed                       a TCP connection closed without an answer
//	refused:ERR                  the send or connect failed
//
// Modes: udp (unconnected sendto/recvfrom), udp-connected, udp-mapped (an
// AF_INET6 socket to a v4-mapped address), tcp, and raw-udp / raw-tcp, which
// send bytes that are no DNS message.
func childDNS() int {
	dst := netip.MustParseAddrPort(os.Getenv("CHIO_DNS_ADDR"))
	mode := os.Getenv("CHIO_DNS_MODE")
	msg := dnsQuery(os.Getenv("CHIO_DNS_NAME"))
	if strings.HasPrefix(mode, "raw-") {
		msg = []byte("GET / HTTP/1.0\r\n\r\n not a DNS message")
	}
	var out string
	var err error
	switch mode {
	case "udp", "raw-udp", "udp-mapped":
		network, laddr := "udp", (*net.UDPAddr)(nil)
		if mode == "udp-mapped" {
			network, laddr = "udp", &net.UDPAddr{IP: net.IPv6unspecified} // dual-stack AF_INET6 ("udp6" is v6-only)
			dst = netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())
		}
		var c *net.UDPConn
		if c, err = net.ListenUDP(network, laddr); err == nil {
			out, err = udpExchange(c, msg, func(b []byte) (int, error) { return c.WriteToUDPAddrPort(b, dst) })
		}
	case "udp-two":
		// One unconnected socket, two resolvers in turn: each answer
		// must come from the one it was sent to.
		dst2 := netip.MustParseAddrPort(os.Getenv("CHIO_DNS_ADDR2"))
		var c *net.UDPConn
		if c, err = net.ListenUDP("udp", nil); err == nil {
			defer c.Close()
			var a, b string
			send := func(to netip.AddrPort) func([]byte) (int, error) {
				return func(m []byte) (int, error) { return c.WriteToUDPAddrPort(m, to) }
			}
			if a, err = udpRoundTrip(c, msg, send(dst)); err == nil {
				b, err = udpRoundTrip(c, msg, send(dst2))
			}
			out = a + "; " + b
		}
	case "udp-burst":
		// CHIO_DNS_N queries from one socket without waiting for answers,
		// the socket kept open 2 s.
		var n int
		fmt.Sscan(os.Getenv("CHIO_DNS_N"), &n)
		var c *net.UDPConn
		if c, err = net.ListenUDP("udp", nil); err == nil {
			defer c.Close()
			for i := 0; i < n && err == nil; i++ {
				_, err = c.WriteToUDPAddrPort(msg, dst)
			}
			out = fmt.Sprintf("sent %d", n)
			// Keep the socket while the agent reads them: a query whose
			// socket is gone has nobody to answer and is not attributed.
			time.Sleep(2 * time.Second)
		}
	case "udp-latency":
		// CHIO_DNS_N queries in turn over one connected socket: the
		// round trips' p50 and p99 in ns.
		var n int
		fmt.Sscan(os.Getenv("CHIO_DNS_N"), &n)
		var c *net.UDPConn
		if c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst)); err == nil {
			defer c.Close()
			rtts := make([]time.Duration, 0, n)
			buf := make([]byte, 1500)
			for i := 0; i < n && err == nil; i++ {
				t0 := time.Now()
				if _, err = c.Write(msg); err == nil {
					c.SetReadDeadline(time.Now().Add(3 * time.Second))
					_, err = c.Read(buf)
				}
				rtts = append(rtts, time.Since(t0))
			}
			slices.Sort(rtts)
			if err == nil && n > 0 {
				out = fmt.Sprintf("p50=%d p99=%d", rtts[n/2], rtts[n*99/100])
			}
		}
	case "udp-connected":
		var c *net.UDPConn
		if c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst)); err == nil {
			out, err = udpExchange(c, msg, c.Write)
		}
	case "tcp", "raw-tcp":
		out, err = tcpExchange(dst, msg)
	default:
		fmt.Println("unknown mode", mode)
		return 2
	}
	if err != nil {
		out = "refused:" + err.Error()
	}
	fmt.Println(out)
	return 0
}

func dnsQuery(name string) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4242, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	m, _ := b.Finish()
	return m
}

func udpExchange(c *net.UDPConn, msg []byte, send func([]byte) (int, error)) (string, error) {
	defer c.Close()
	return udpRoundTrip(c, msg, send)
}

func udpRoundTrip(c *net.UDPConn, msg []byte, send func([]byte) (int, error)) (string, error) {
	if _, err := send(msg); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 65535)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return "noanswer", nil
		}
		return "", err
	}
	return describeAnswer(buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())), nil
}

func tcpExchange(dst netip.AddrPort, msg []byte) (string, error) {
	c, err := net.DialTimeout("tcp", dst.String(), 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	out := binary.BigEndian.AppendUint16(nil, uint16(len(msg)))
	if _, err := c.Write(append(out, msg...)); err != nil {
		return "", err
	}
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return "noanswer", nil
		}
		return "closed", nil
	}
	ans := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(c, ans); err != nil {
		return "closed", nil
	}
	return describeAnswer(ans, dst), nil
}

func describeAnswer(b []byte, from netip.AddrPort) string {
	var p dnsmessage.Parser
	if _, err := p.Start(b); err != nil {
		return "garbage from=" + from.String()
	}
	q, err := p.Question()
	if err != nil {
		return "garbage from=" + from.String()
	}
	return fmt.Sprintf("answer from=%s name=%s", from, q.Name)
}

package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
)

// The test binary doubles as a Go client run inside protected workloads:
// CHIO_E2E_CHILD selects what it does.
func TestMain(m *testing.M) {
	switch os.Getenv("CHIO_E2E_CHILD") {
	case "":
		// One containerd for the binary, started by the first test that
		// asks for it (kube_test.go).
		os.Exit(containerd.Main(m))
	case "https":
		os.Exit(childHTTPS())
	case "dns-udp":
		os.Exit(childDNSUDP())
	case "conns":
		os.Exit(childConns())
	case "recreate":
		os.Exit(childRecreate())
	case "attack":
		os.Exit(attackChild())
	case "dns":
		os.Exit(childDNS())
	default:
		fmt.Println("unknown child mode")
		os.Exit(2)
	}
}

// childHTTPS: Go's net/http client, dialling CHIO_E2E_ADDR for
// CHIO_E2E_URL, trusting CHIO_E2E_CA.
func childHTTPS() int {
	pem, err := os.ReadFile(os.Getenv("CHIO_E2E_CA"))
	if err != nil {
		fmt.Println(err)
		return 2
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DialContext: dialFixed}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(os.Getenv("CHIO_E2E_URL"))
	if err != nil {
		fmt.Println("get:", err)
		return 1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("%d %s", resp.StatusCode, b)
	return 0
}

// dialFixed dials CHIO_E2E_ADDR whatever the URL's host: the test names
// are in no DNS, and the child must not look them up.
func dialFixed(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, os.Getenv("CHIO_E2E_ADDR"))
}

// childDNSUDP: a real DNS lookup through the resolver CHIO_E2E_DNS (UDP),
// then a QUIC-like datagram to CHIO_E2E_UDP, which must be refused.
func childDNSUDP() int {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", os.Getenv("CHIO_E2E_DNS"))
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, "api.allowed.test")
	if err != nil {
		fmt.Println("dns:", err)
		return 1
	}
	fmt.Println("dns", addrs)
	c, err := net.Dial("udp", os.Getenv("CHIO_E2E_UDP"))
	if err == nil {
		_, err = c.Write([]byte("quic initial"))
		c.Close()
	}
	if errors.Is(err, syscall.EPERM) {
		fmt.Println("udp refused")
		return 0
	}
	fmt.Println("udp not refused:", err)
	return 1
}

// childConns: CHIO_E2E_N HTTP requests to CHIO_E2E_URL, CHIO_E2E_PAR at a
// time, each on its own connection.
func childConns() int {
	n, _ := strconv.Atoi(os.Getenv("CHIO_E2E_N"))
	par, _ := strconv.Atoi(os.Getenv("CHIO_E2E_PAR"))
	url := os.Getenv("CHIO_E2E_URL")
	cl := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: dialFixed}, Timeout: 30 * time.Second}
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				resp, err := cl.Get(url)
				if err != nil {
					if failed.Add(1) <= 3 {
						fmt.Println("get:", err)
					}
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("done %d failed %d\n", n, failed.Load())
	if failed.Load() != 0 {
		return 1
	}
	return 0
}

// listenDNS binds the test resolver's UDP socket on a random 127.x.y.z address
// and a free port: nothing else on the machine uses such an address, unlike
// 127.0.0.53:53, which a system resolver may hold.
func listenDNS(t *testing.T) net.PacketConn {
	t.Helper()
	var b [3]byte
	rand.Read(b[:])
	addr := netip.AddrFrom4([4]byte{127, 100 + b[0]%100, b[1], 1 + b[2]%250})
	pc, err := net.ListenPacket("udp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		t.Fatalf("dns server: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// serveDNS answers every A query with 127.0.0.1 on pc.
func serveDNS(pc net.PacketConn) {
	answerDNS(pc, true, func(q dnsmessage.Question) ([4]byte, bool) {
		return [4]byte{127, 0, 0, 1}, q.Type == dnsmessage.TypeA
	})
}

// answerDNS is a test DNS server on pc until pc closes: each query gets a
// response (authoritative or not) repeating its question and, when answer
// gives an address, an A record with it (TTL 60). Malformed queries get
// nothing.
func answerDNS(pc net.PacketConn, authoritative bool, answer func(q dnsmessage.Question) ([4]byte, bool)) {
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: authoritative})
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			if a, ok := answer(q); ok {
				b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: a})
			}
			if msg, err := b.Finish(); err == nil {
				pc.WriteTo(msg, from)
			}
		}
	}()
}

// childRecreate: make the cgroup CHIO_E2E_CGROUP, move into it and at once
// connect to CHIO_E2E_ADDR and send an HTTP request for api.allowed.test,
// faster than any agent could notice the new directory. Exit 0 with the
// response's status line; 4 when the connect was refused (EPERM).
func childRecreate() int {
	path := os.Getenv("CHIO_E2E_CGROUP")
	if err := os.Mkdir(path, 0o755); err != nil {
		fmt.Println("mkdir-error", err)
		return 2
	}
	if err := os.WriteFile(path+"/cgroup.procs", []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		fmt.Println("move-error", err)
		return 2
	}
	c, err := net.DialTimeout("tcp4", os.Getenv("CHIO_E2E_ADDR"), 10*time.Second)
	if err != nil {
		fmt.Println("dial-error", err)
		if errors.Is(err, syscall.EPERM) {
			return 4
		}
		return 3
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(c, "GET /recreated HTTP/1.0\r\nHost: api.allowed.test\r\n\r\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Println("read-error", err)
		return 3
	}
	fmt.Print(line)
	return 0
}

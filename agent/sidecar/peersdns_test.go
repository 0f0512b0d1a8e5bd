package sidecar

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/session"
)

const testPeersName = "chio-peers.chio.test."

func startTestDNS(t *testing.T, addrs ...string) *testutil.DNS {
	return testutil.StartDNS(t, testPeersName, addrs...)
}

// TestDNSPeersRefresh: the ring follows the name's answers; a server that
// is down, fails, answers nothing, or leaves this replica out keeps the
// last ring and is counted.
func TestDNSPeersRefresh(t *testing.T) {
	d := startTestDNS(t, "10.0.0.1", "10.0.0.2")
	var ring atomic.Pointer[session.Ring]
	p := &dnsPeers{host: testPeersName, port: "8080", self: "10.0.0.1:8080", resolver: d.Resolver(), log: logrus.New(), ring: &ring}
	ctx := context.Background()
	peers := func() []string {
		if r := ring.Load(); r != nil {
			return r.Peers()
		}
		return nil
	}
	if err := p.refresh(ctx); err != nil || !slices.Equal(peers(), []string{"10.0.0.1:8080", "10.0.0.2:8080"}) {
		t.Fatalf("first refresh: %v %v", peers(), err)
	}
	d.Set("10.0.0.2", "10.0.0.1", "fd00::3")
	if err := p.refresh(ctx); err != nil || !slices.Equal(peers(), []string{"10.0.0.1:8080", "10.0.0.2:8080", "[fd00::3]:8080"}) {
		t.Fatalf("answers changed: %v %v", peers(), err)
	}
	good := ring.Load()
	for name, break_ := range map[string]func(){
		"server down":   func() { d.Down.Store(true) },
		"servfail":      func() { d.Servfail() },
		"empty answer":  func() { d.Set() },
		"self left out": func() { d.Set("10.0.0.2", "10.0.0.9") },
	} {
		before := p.failures.Load()
		break_()
		if err := p.refresh(ctx); err == nil {
			t.Fatalf("%s: refresh reported no error", name)
		}
		if ring.Load() != good || p.failures.Load() != before+1 {
			t.Fatalf("%s: ring %v (failures %d→%d); the last good ring must stay", name, peers(), before, p.failures.Load())
		}
		d.Down.Store(false)
		d.Set("10.0.0.2", "10.0.0.1", "fd00::3")
	}
	// The periodic refresh picks a new answer up by itself, and stops
	// with its context.
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { p.run(runCtx, 10*time.Millisecond); close(done) }()
	d.Set("10.0.0.1")
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(peers(), []string{"10.0.0.1:8080"}) {
		if time.Now().After(deadline) {
			t.Fatalf("periodic refresh: ring still %v", peers())
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	<-done
	// A replica whose first resolution fails has no ring: its session
	// requests are refused (route), not decided locally.
	var none atomic.Pointer[session.Ring]
	d.Set("10.0.0.2")
	q := &dnsPeers{host: testPeersName, port: "8080", self: "10.0.0.1:8080", resolver: d.Resolver(), log: logrus.New(), ring: &none}
	if err := q.refresh(ctx); err == nil || none.Load() != nil {
		t.Fatalf("no ring expected: %v %v", none.Load(), err)
	}
}

// listenSamePort listens on one port on each of n loopback addresses
// (127.0.0.1, .2, ...), as replicas behind a headless Service share a
// port on distinct addresses.
func listenSamePort(t *testing.T, n int) []net.Listener {
	for range 20 {
		first, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns := []net.Listener{first}
		_, port, _ := net.SplitHostPort(first.Addr().String())
		for i := 2; i <= n; i++ {
			ln, err := net.Listen("tcp", net.JoinHostPort(fmt.Sprintf("127.0.0.%d", i), port))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == n {
			return lns
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatal("no port free on every loopback address")
	return nil
}

// TestReplicasFromDNS: three sidecars whose peers come from a DNS name.
// The name first lists two of them: their sessions are pinned between
// those two, and the third, left out, refuses session requests rather
// than deciding them. The answer then adds the third: about a third of
// the sessions move, all of them to the new replica, and each session's
// next call is decided by its new owner. Then the answer drops the first
// (still up): its sessions are handed to their new owners with their
// journals, and every session's figures carry over.
func TestReplicasFromDNS(t *testing.T) {
	const sessions = 300
	lns := listenSamePort(t, 3)
	var ips []string
	for _, ln := range lns {
		ip, _, _ := net.SplitHostPort(ln.Addr().String())
		ips = append(ips, ip)
	}
	_, port, _ := net.SplitHostPort(lns[0].Addr().String())
	d := startTestDNS(t, ips[0], ips[1])
	rs := newReplicaSet(t)
	for i, ln := range lns {
		rs.addrs = append(rs.addrs, ln.Addr().String())
		// Refreshed by hand below: the test decides when answers change.
		rs.start(ln, config.ResolvedSessions{Header: hdrSession, PeersDNS: net.JoinHostPort(testPeersName, port), PeersRefresh: time.Hour,
			Self: rs.addrs[i], PeerToken: rs.token}, d.Resolver())
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8}}
	defer client.CloseIdleConnections()
	owners := func() map[string]int {
		out := map[string]int{}
		for i := range sessions {
			sid := fmt.Sprintf("dns-%d", i)
			for k, s := range rs.servers {
				s.Sessions().Flush(context.Background())
				if _, ok, _ := s.Sessions().Head(sid); ok {
					out[sid] |= 1 << k
				}
			}
		}
		return out
	}
	// call sends one request of every session via one replica, 16 at a
	// time (a new session's hand-over requests and journal writes are
	// durable: in parallel they share their commits).
	call := func(via int) {
		var wg sync.WaitGroup
		for w := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < sessions; i += 16 {
					sid := fmt.Sprintf("dns-%d", i)
					if resp, body := rs.get(client, via, map[string]string{hdrSession: sid}); resp.StatusCode != 200 {
						t.Errorf("%s via replica %d: %d %s", sid, via, resp.StatusCode, body)
					}
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
	}
	if resp, body := rs.get(client, 2, map[string]string{hdrSession: "dns-0"}); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, codeNoPeers) {
		t.Fatalf("replica left out of the name: %d %s", resp.StatusCode, body)
	}
	var st SessionsStatus
	rs.servers[2].replicas.status(&st)
	if st.Peers != nil || st.PeerRefreshFailures != 1 || st.PeersDNS == "" {
		t.Fatalf("status of the replica left out: %+v", st)
	}
	call(0)
	two, _ := session.NewRing(rs.addrs[:2])
	before := owners()
	if len(before) != sessions {
		t.Fatalf("%d of %d sessions journaled", len(before), sessions)
	}
	for sid, where := range before {
		if want := 1 << slices.Index(rs.addrs, two.Owner(sid)); where != want {
			t.Fatalf("%s journaled on replicas %b, owner %s", sid, where, two.Owner(sid))
		}
	}
	// The name now lists the third replica too.
	d.Set(ips...)
	for k, s := range rs.servers {
		if err := s.replicas.dns.refresh(context.Background()); err != nil || len(s.replicas.ring.Load().Peers()) != 3 {
			t.Fatalf("replica %d: refresh %v", k, err)
		}
	}
	st = SessionsStatus{}
	rs.servers[2].replicas.status(&st)
	if len(st.Peers) != 3 || st.PeerRefreshFailures != 1 {
		t.Fatalf("status once listed: %+v", st)
	}
	call(1)
	three, _ := session.NewRing(rs.addrs)
	moved := 0
	for sid, where := range owners() {
		now := three.Owner(sid)
		if now != two.Owner(sid) {
			moved++
			if now != rs.addrs[2] {
				t.Fatalf("%s moved to %s, not to the added replica", sid, now)
			}
		}
		if where&(1<<slices.Index(rs.addrs, now)) == 0 {
			t.Fatalf("%s: second call not decided by its owner %s (journaled on %b)", sid, now, where)
		}
	}
	// Rendezvous hashing moves about 1/3 of them (100 expected, σ≈8).
	if moved < sessions/5 || moved > sessions/2 {
		t.Fatalf("%d of %d sessions moved; about a third expected", moved, sessions)
	}
	t.Logf("%d of %d sessions moved to the added replica", moved, sessions)
	// The name drops the first replica, still up (drained): its sessions
	// go to their owners among the other two, which find it through the
	// hints and take each with its journal. Every session's figures carry
	// over: three calls, on whichever replicas.
	d.Set(ips[1:]...)
	for k, s := range rs.servers[1:] {
		if err := s.replicas.dns.refresh(context.Background()); err != nil || len(s.replicas.ring.Load().Peers()) != 2 {
			t.Fatalf("replica %d: refresh %v", k+1, err)
		}
	}
	call(2)
	last, _ := session.NewRing(rs.addrs[1:])
	drained := 0
	for i := range sessions {
		sid := fmt.Sprintf("dns-%d", i)
		owner := slices.Index(rs.addrs, last.Owner(sid))
		h, err := rs.servers[owner].Sessions().Holding(sid)
		if err != nil || !h.Here || h.Head.Totals.Calls != 3 {
			t.Fatalf("%s on its owner %d after the drain: %v %+v, want held with 3 calls", sid, owner, err, h.Head)
		}
		if three.Owner(sid) == rs.addrs[0] {
			drained++
			if h.Head.Segment == nil || h.Head.Segment.Link != session.LinkLinked {
				t.Fatalf("%s taken from the drained replica without its journal: %+v", sid, h.Head.Segment)
			}
		}
	}
	if drained == 0 {
		t.Fatal("no session was on the drained replica")
	}
	t.Logf("%d sessions handed over by the drained replica", drained)
}

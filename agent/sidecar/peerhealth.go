package sidecar

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// peerHealth is which peers this replica sees down: a peer is down from a
// refused connection (a forward, handover request or probe), or from
// downAfter failures in a row, until a probe answers. Down
// peers own no sessions here (session.Ring.OwnerAmong): each of their
// sessions goes to its next-highest peer, which takes it (takeSession).
type peerHealth struct {
	log  logrus.FieldLogger
	mu   sync.Mutex
	down map[string]bool
	// failures counts a peer's failures in a row that did not prove it
	// down (timeouts: a peer may be slow under load).
	failures map[string]int
}

// downAfter is how many failures in a row that are not a refused
// connection take a peer down.
const downAfter = 3

func (h *peerHealth) up(peer string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.down[peer]
}

// markDown counts a failure to reach peer: a refused connection (nothing
// listens there) takes it down at once, other failures after downAfter
// in a row.
func (h *peerHealth) markDown(peer string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down == nil {
		h.down, h.failures = map[string]bool{}, map[string]int{}
	}
	h.failures[peer]++
	if !errors.Is(err, syscall.ECONNREFUSED) && h.failures[peer] < downAfter {
		return
	}
	if !h.down[peer] {
		h.down[peer] = true
		h.log.WithError(err).WithField("peer", peer).Warn("session peer down: its sessions go to their next replica")
	}
}

func (h *peerHealth) markUp(peer string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.failures, peer)
	if h.down[peer] {
		delete(h.down, peer)
		h.log.WithField("peer", peer).Info("session peer up again: it owns its sessions again")
	}
}

// probe checks every peer's PathLive every interval (each probe bounded by
// the interval) until ctx ends.
func (rp *replicas) probe(ctx context.Context, every time.Duration) {
	everyTick(ctx, every, func() bool {
		rp.probeOnce(ctx, every)
		return true
	})
}

// probeOnce probes every peer once, each bounded by timeout.
func (rp *replicas) probeOnce(ctx context.Context, timeout time.Duration) {
	rp.eachPeer(func(p string) {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		req, err := http.NewRequestWithContext(pctx, http.MethodGet, "http://"+p+PathLive, nil)
		if err != nil {
			return
		}
		resp, err := rp.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				rp.health.markUp(p)
				return
			}
			if resp.Header.Get(HeaderReplicaState) == replicaLeaving {
				rp.health.markLeaving(p) // stopping: down at once (drain.go)
				return
			}
		}
		if ctx.Err() == nil {
			rp.health.markDown(p, err)
		}
	})
}

// eachPeer calls fn for every other replica of the ring, in parallel, and
// returns when every call has.
func (rp *replicas) eachPeer(fn func(peer string)) {
	ring := rp.ring.Load()
	if ring == nil {
		return
	}
	var wg sync.WaitGroup
	for _, p := range ring.Peers() {
		if p != rp.self {
			wg.Add(1)
			go func() {
				defer wg.Done()
				fn(p)
			}()
		}
	}
	wg.Wait()
}

// dnsServerResolver resolves through the DNS server at addr (ip:port)
// only: sessions.peers_resolver.
func dnsServerResolver(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/kernel/session"
)

// peerLookupTimeout bounds one resolution of sessions.peers_dns.
const peerLookupTimeout = 5 * time.Second

// dnsPeers re-resolves sessions.peers_dns (a headless Service) into the
// replicas' ring. A resolution that fails, is empty, or leaves this
// replica out keeps the last good ring: it is logged and counted, never
// a silent fall back to deciding every session here.
type dnsPeers struct {
	host, port string
	self       string
	resolver   *net.Resolver
	log        logrus.FieldLogger
	ring       *atomic.Pointer[session.Ring]
	// failures counts refreshes that kept the last ring.
	failures atomic.Uint64
}

// refresh resolves the name once and swaps the ring if its peers changed.
func (d *dnsPeers) refresh(ctx context.Context) error {
	err := d.resolve(ctx)
	if err != nil {
		d.failures.Add(1)
		kept := "no ring yet: session requests are refused"
		if r := d.ring.Load(); r != nil {
			kept = fmt.Sprintf("keeping the last ring %v", r.Peers())
		}
		d.log.WithError(err).Warn("session peers not refreshed; " + kept)
	}
	return err
}

func (d *dnsPeers) resolve(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, peerLookupTimeout)
	defer cancel()
	addrs, err := d.resolver.LookupIPAddr(ctx, d.host)
	if err != nil {
		return fmt.Errorf("resolve session peers %s: %w", d.host, err)
	}
	var peers []string
	for _, a := range addrs {
		p := net.JoinHostPort(a.String(), d.port)
		if !slices.Contains(peers, p) {
			peers = append(peers, p)
		}
	}
	if len(peers) == 0 {
		return fmt.Errorf("resolve session peers %s: no addresses", d.host)
	}
	if !slices.Contains(peers, d.self) {
		return fmt.Errorf("resolve session peers %s: this replica (%s) is not among %v", d.host, d.self, peers)
	}
	ring, err := session.NewRing(peers)
	if err != nil {
		return err
	}
	if old := d.ring.Load(); old != nil && slices.Equal(old.Peers(), ring.Peers()) {
		return nil
	}
	d.ring.Store(ring)
	d.log.WithField("peers", ring.Peers()).Info("session peers changed")
	return nil
}

// run refreshes every interval until ctx ends.
func (d *dnsPeers) run(ctx context.Context, every time.Duration) {
	everyTick(ctx, every, func() bool {
		err := d.refresh(ctx)
		return err == nil || !errors.Is(err, context.Canceled)
	})
}

// everyTick calls fn every interval until ctx ends or fn returns false.
func everyTick(ctx context.Context, every time.Duration, fn func() bool) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !fn() {
				return
			}
		}
	}
}

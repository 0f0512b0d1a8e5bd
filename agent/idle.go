package agent

import (
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// relayPair is a relayed connection's two sockets.
type relayPair struct{ a, b *net.TCPConn }

// idleSet closes relayed connections once neither socket has received data
// for the idle timeout. One goroutine checks every relay a few times per
// timeout, reading the kernel's own last-receive times (TCP_INFO), so the
// relay stays on splice(2) with no byte counting and no timer per connection.
type idleSet struct {
	idle  time.Duration
	mu    sync.Mutex
	pairs map[*relayPair]struct{}
}

func newIdleSet(idle time.Duration) *idleSet {
	return &idleSet{idle: idle, pairs: map[*relayPair]struct{}{}}
}

func (s *idleSet) add(p *relayPair) {
	s.mu.Lock()
	s.pairs[p] = struct{}{}
	s.mu.Unlock()
}

func (s *idleSet) remove(p *relayPair) {
	s.mu.Lock()
	delete(s.pairs, p)
	s.mu.Unlock()
}

// run checks the relays until stop is closed.
func (s *idleSet) run(stop <-chan struct{}) {
	tick := s.idle / 4
	if tick < 50*time.Millisecond {
		tick = 50 * time.Millisecond
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var batch []*relayPair
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		batch = batch[:0]
		for p := range s.pairs {
			batch = append(batch, p)
		}
		s.mu.Unlock()
		for _, p := range batch {
			ia, erra := sinceLastRecv(p.a)
			ib, errb := sinceLastRecv(p.b)
			if erra == nil && errb == nil && ia >= s.idle && ib >= s.idle {
				p.a.Close()
				p.b.Close()
			}
		}
		clear(batch)
	}
}

func sinceLastRecv(c *net.TCPConn) (time.Duration, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return time.Duration(info.Last_data_recv) * time.Millisecond, nil
}

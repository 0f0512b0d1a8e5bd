package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DNSOriginal is where a protected workload's UDP socket sent DNS, and who
// sent it, as dns.c recorded it at the socket's last sendmsg (or connect) to
// port 53.
type DNSOriginal struct {
	Original
	// Listener is the DNS listener the datagrams were sent to instead.
	Listener netip.AddrPort
}

// dnsPorts puts w's DNS listener ports into v. A DNS port needs its
// family's listener: its address is the one the datagrams go to.
func dnsPorts(v *chioWorkload, w Workload) error {
	if w.DNSPort4 != 0 && !w.Listen4.IsValid() {
		return fmt.Errorf("DNS port %d without an IPv4 listener", w.DNSPort4)
	}
	if w.DNSPort6 != 0 && !w.Listen6.IsValid() {
		return fmt.Errorf("DNS port %d without an IPv6 listener", w.DNSPort6)
	}
	v.DnsPort4, v.DnsPort6 = htons(w.DNSPort4), htons(w.DNSPort6)
	return nil
}

// DNSOriginal returns the DNS original of the UDP socket whose cookie is
// given (found by the agent through sock_diag from a datagram's source). The
// entry stays: a socket sends many queries. ErrNoOriginal when the socket
// never sent DNS from a protected workload (or its entry was evicted).
func (o *Objects) DNSOriginal(cookie uint64) (DNSOriginal, error) {
	var v chioDnsOrig
	if err := o.objs.DnsOrigs.Lookup(cookie, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return DNSOriginal{}, fmt.Errorf("look up DNS original of socket %d: %w", cookie, ErrNoOriginal)
		}
		return DNSOriginal{}, fmt.Errorf("look up DNS original of socket %d: %w", cookie, err)
	}
	return DNSOriginal{
		Original: originalOf(&v.Orig),
		Listener: netip.AddrPortFrom(wordsAddr(v.ListenAddr), ntohs(v.ListenPort)),
	}, nil
}

// originalOf converts a recorded original.
func originalOf(v *chioOrigDst) Original {
	return Original{
		Dst:        netip.AddrPortFrom(wordsAddr(v.Addr), ntohs(v.Port)),
		Family:     int(v.Family),
		WorkloadID: v.WorkloadId,
		PID:        v.Pid,
		UID:        v.Uid,
		CgroupID:   v.CgroupId,
		Comm:       unix.ByteSliceToString(v.Comm[:]),
	}
}

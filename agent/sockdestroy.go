package agent

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// destroyListener closes a TCP listener of another process, the one bound
// to local in the network namespace at netnsPath, through sock_diag's
// SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY; what `ss -K` uses). The kernel
// drops packets to a refused listener already; once it is destroyed, a peer
// gets a reset at once instead of waiting out its SYN retries, and the
// workload's accept() fails.
func destroyListener(netnsPath string, local netip.AddrPort) error {
	return inNetns(netnsPath, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return fmt.Errorf("destroy listener %s: %w", local, os.NewSyscallError("socket", err))
		}
		defer unix.Close(fd)
		tv := unix.Timeval{Sec: 2}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		if err := unix.Sendto(fd, destroyRequest(local), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return fmt.Errorf("destroy listener %s: %w", local, os.NewSyscallError("sendto", err))
		}
		buf := make([]byte, 4096)
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("destroy listener %s: %w", local, os.NewSyscallError("recvfrom", err))
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("destroy listener %s: %w", local, err)
		}
		for _, m := range msgs {
			if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
				if errno := int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
					return fmt.Errorf("destroy listener %s: %w", local, unix.Errno(-errno))
				}
				return nil
			}
		}
		return fmt.Errorf("destroy listener %s: no acknowledgement", local)
	})
}

// tcpListen is TCP_LISTEN of the kernel's TCP states (include/net/tcp_states.h).
const tcpListen = 10

// destroyRequest is a SOCK_DESTROY request (nlmsghdr, inet_diag_req_v2) for
// the TCP listener bound to local: an IPv4 address (v4-mapped too) names an
// AF_INET socket, any other an AF_INET6 one.
func destroyRequest(local netip.AddrPort) []byte {
	const hdrLen, reqLen = unix.SizeofNlMsghdr, 56
	b := make([]byte, hdrLen+reqLen)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.SOCK_DESTROY)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(b[8:], 1) // sequence
	r := b[hdrLen:]
	addr := local.Addr().Unmap()
	r[0] = unix.AF_INET6
	if addr.Is4() {
		r[0] = unix.AF_INET
	}
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 1<<tcpListen)               // idiag_states
	binary.BigEndian.PutUint16(r[8:], local.Port()) // id.idiag_sport
	if addr.Is4() {                                 // id.idiag_src
		a := addr.As4()
		copy(r[12:], a[:])
	} else {
		a := addr.As16()
		copy(r[12:], a[:])
	}
	// id.idiag_dport, idiag_dst and idiag_if stay 0 (a listener); the cookie
	// is INET_DIAG_NOCOOKIE: match by address and port.
	ne.PutUint32(r[48:], ^uint32(0))
	ne.PutUint32(r[52:], ^uint32(0))
	return b
}

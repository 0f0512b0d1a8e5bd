package agent

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// diagSock is a NETLINK_SOCK_DIAG socket opened in one network namespace,
// which it keeps answering for: the DNS listeners there ask it which socket
// sent each datagram.
type diagSock struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

// openDiag opens a sock_diag socket in the calling thread's namespace.
func openDiag() (*diagSock, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("open sock_diag: %w", os.NewSyscallError("socket", err))
	}
	tv := unix.Timeval{Sec: 2}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open sock_diag: %w", os.NewSyscallError("setsockopt", err))
	}
	return &diagSock{fd: fd, buf: make([]byte, 1<<13)}, nil
}

func (d *diagSock) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd >= 0 {
		unix.Close(d.fd)
		d.fd = -1
	}
}

// udpCookie returns the cookie of the UDP socket that a datagram from client
// to local (a listener of this namespace) came from: the socket the kernel
// would deliver a datagram from local to client to. family is the
// listener's; a dual-stack IPv6 socket sending to an IPv4 listener is found
// by an AF_INET lookup.
func (d *diagSock) udpCookie(family uint8, local, client netip.AddrPort) (uint64, error) {
	req := make([]byte, unix.SizeofNlMsghdr+inetDiagReqLen)
	ne := binary.NativeEndian
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return 0, fmt.Errorf("find socket of %s: sock_diag closed", client)
	}
	d.seq++
	seq := d.seq
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], seq)
	r := req[unix.SizeofNlMsghdr:]
	r[0], r[1] = family, unix.IPPROTO_UDP
	ne.PutUint32(r[4:], 0xffffffff) // every state
	// inet_diag_sockid: udp_dump_one looks the socket up as the receiver of
	// a datagram from src:sport to dst:dport.
	binary.BigEndian.PutUint16(r[8:], local.Port())
	binary.BigEndian.PutUint16(r[10:], client.Port())
	putDiagAddr(r[12:28], family, local.Addr())
	putDiagAddr(r[28:44], family, client.Addr())
	ne.PutUint32(r[48:], 0xffffffff) // INET_DIAG_NOCOOKIE
	ne.PutUint32(r[52:], 0xffffffff)
	if err := unix.Sendto(d.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("find socket of %s: %w", client, os.NewSyscallError("sendto", err))
	}
	for {
		n, _, err := unix.Recvfrom(d.fd, d.buf, 0)
		if err != nil {
			return 0, fmt.Errorf("find socket of %s: %w", client, os.NewSyscallError("recvfrom", err))
		}
		msgs, err := syscall.ParseNetlinkMessage(d.buf[:n])
		if err != nil {
			return 0, fmt.Errorf("find socket of %s: %w", client, err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue // an answer to an earlier request that timed out
			}
			switch m.Header.Type {
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(ne.Uint32(m.Data[:4])); errno != 0 {
						return 0, fmt.Errorf("find socket of %s: %w", client, unix.Errno(-errno))
					}
				}
				return 0, fmt.Errorf("find socket of %s: %w", client, unix.ENOENT)
			case unix.SOCK_DIAG_BY_FAMILY:
				if len(m.Data) < inetDiagMsgLen {
					return 0, fmt.Errorf("find socket of %s: short sock_diag answer", client)
				}
				return uint64(ne.Uint32(m.Data[44:])) | uint64(ne.Uint32(m.Data[48:]))<<32, nil
			}
		}
	}
}

// putDiagAddr writes a as inet_diag_sockid writes addresses of family.
func putDiagAddr(b []byte, family uint8, a netip.Addr) {
	if family == unix.AF_INET {
		v4 := a.Unmap().As4()
		copy(b, v4[:])
		return
	}
	v6 := a.As16()
	copy(b, v6[:])
}

package agent

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The hostile workload of attacks_test.go: the test binary run again inside
// the protected cgroup with CHIO_E2E_CHILD=attack and CHIO_E2E_ATTACK naming
// the attack. It drops to CHIO_E2E_UID first (when set and not 0), so that
// the same attack runs as root and as an unprivileged user; the binary
// itself need not be readable by that user.
//
// Every attack prints one outcome line and exits 0; exit 2 means the child
// itself could not run the attack. Outcomes:
//
//	refused:ERRNO   a syscall of the attack failed (connect, sendto, ...)
//	reset | eof     the connection was made (to the agent) and closed
//	                without an answer
//	reply:QUOTED    an answer came back (the test decides whether it is
//	                the forbidden server's)
//	timeout         nothing came back in 10 s
func attackChild() int {
	if uid, _ := strconv.Atoi(os.Getenv("CHIO_E2E_UID")); uid != 0 {
		if err := dropTo(uid); err != nil {
			fmt.Println("drop privileges:", err)
			return 2
		}
	}
	attacks := map[string]func() (string, error){
		"tfo-sendto":        attackTFOSendto,
		"tfo-connect":       attackTFOConnect,
		"tcp6":              attackTCP6,
		"mptcp":             attackMPTCP,
		"mptcp-tfo":         attackMPTCPFastOpen,
		"udp":               attackUDP,
		"iouring-connect":   attackIOURingConnect,
		"iouring-sendmsg":   attackIOURingSendmsg,
		"somark":            attackSOMark,
		"somark-cap-netraw": attackSOMarkWithNetRaw,
		"http-raw":          attackHTTPRaw,
		"tls":               attackTLS,
		"cgroup-escape":     attackCgroupEscape,
		"flood":             attackFlood,
	}
	f, ok := attacks[os.Getenv("CHIO_E2E_ATTACK")]
	if !ok {
		fmt.Println("unknown attack", os.Getenv("CHIO_E2E_ATTACK"))
		return 2
	}
	out, err := f()
	if err != nil {
		fmt.Println("attack failed to run:", err)
		return 2
	}
	fmt.Println(out)
	return 0
}

// dropTo makes every thread of the process uid (and gid uid), with no
// supplementary groups and no capabilities left.
func dropTo(uid int) error {
	if err := syscall.Setgroups(nil); err != nil {
		return err
	}
	if err := syscall.Setresgid(uid, uid, uid); err != nil {
		return err
	}
	return syscall.Setresuid(uid, uid, uid)
}

// target is CHIO_E2E_ADDR as a socket address, with the family to use.
func target() (unix.Sockaddr, int, error) {
	ap, err := netip.ParseAddrPort(os.Getenv("CHIO_E2E_ADDR"))
	if err != nil {
		return nil, 0, fmt.Errorf("parse CHIO_E2E_ADDR: %w", err)
	}
	// A v4-mapped address stays IPv6: that is the attack.
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}, unix.AF_INET, nil
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}, unix.AF_INET6, nil
}

// payload is what the attack sends: CHIO_E2E_DATA, or bytes that are no
// known protocol.
func payload() []byte {
	if d := os.Getenv("CHIO_E2E_DATA"); d != "" {
		return []byte(d)
	}
	return []byte("opaque attack bytes\n")
}

func refused(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return "refused:" + unix.ErrnoName(errno)
	}
	return "refused:" + err.Error()
}

// answer reads what comes back on fd (connected, request sent) and closes it.
func answer(fd int) string {
	defer unix.Close(fd)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 10})
	var got []byte
	buf := make([]byte, 4096)
	for len(got) < 64<<10 {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue // a read with SO_RCVTIMEO is not restarted after the runtime's signals
		}
		if n > 0 {
			got = append(got, buf[:n]...)
			continue
		}
		switch {
		case len(got) > 0:
		case err == nil:
			return "eof"
		case errors.Is(err, unix.ECONNRESET):
			return "reset"
		case errors.Is(err, unix.EAGAIN):
			return "timeout"
		default:
			return refused(err)
		}
		break
	}
	return "reply:" + strconv.Quote(string(got))
}

// openTarget makes a stream socket of protocol proto in the target's
// family. fd is -1 when there is none: err says why the attack could not
// run, or, with err nil, outcome is the refused socket() the attack met.
func openTarget(proto int) (fd int, sa unix.Sockaddr, outcome string, err error) {
	sa, family, err := target()
	if err != nil {
		return -1, nil, "", err
	}
	fd, err = unix.Socket(family, unix.SOCK_STREAM, proto)
	if err != nil {
		return -1, nil, "socket-" + refused(err), nil
	}
	return fd, sa, "", nil
}

// exchange connects a new socket of the given type and protocol to the
// target, sends the payload and returns what came back.
func exchange(proto int, before func(fd int) error) (string, error) {
	fd, sa, outcome, err := openTarget(proto)
	if fd < 0 {
		return outcome, err
	}
	if before != nil {
		if err := before(fd); err != nil {
			unix.Close(fd)
			return "", err
		}
	}
	if err := connect(fd, sa); err != nil {
		unix.Close(fd)
		return refused(err), nil
	}
	if _, err := write(fd, payload()); err != nil {
		unix.Close(fd)
		return refused(err), nil
	}
	return answer(fd), nil
}

// connect is connect(2) on a blocking socket through the runtime's signals:
// an interrupted connect goes on in the background, and its result is the
// socket's error once it is writable.
func connect(fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	if !errors.Is(err, unix.EINTR) {
		return err
	}
	return settle(fd)
}

// settle waits until fd's connection attempt is over and returns its error.
func settle(fd int) error {
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if _, err := unix.Poll(pfd, 10000); errors.Is(err, unix.EINTR) {
			continue
		} else if err != nil {
			return err
		}
		soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soerr != 0 {
			return unix.Errno(soerr)
		}
		return nil
	}
}

// write is write(2), again after an interruption.
func write(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Write(fd, b)
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

// fastOpen sends the payload in the SYN with sendto(MSG_FASTOPEN): no
// connect() call at all.
func fastOpen(proto int) (string, error) {
	fd, sa, outcome, err := openTarget(proto)
	if fd < 0 {
		return outcome, err
	}
	err = unix.Sendto(fd, payload(), unix.MSG_FASTOPEN, sa)
	if errors.Is(err, unix.EINTR) {
		// Interrupted while connecting: nothing was sent yet.
		if err = settle(fd); err == nil {
			_, err = write(fd, payload())
		}
	}
	if err != nil {
		unix.Close(fd)
		return refused(err), nil
	}
	return answer(fd), nil
}

func attackTFOSendto() (string, error) { return fastOpen(unix.IPPROTO_TCP) }

// attackTFOConnect: TCP_FASTOPEN_CONNECT makes connect() return at once and
// the first write carry the SYN.
func attackTFOConnect() (string, error) {
	return exchange(unix.IPPROTO_TCP, func(fd int) error {
		return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, 1)
	})
}

// attackTCP6 connects an AF_INET6 socket (the target may be v4-mapped).
func attackTCP6() (string, error) { return exchange(unix.IPPROTO_TCP, nil) }

func attackMPTCP() (string, error) { return exchange(unix.IPPROTO_MPTCP, nil) }

func attackMPTCPFastOpen() (string, error) { return fastOpen(unix.IPPROTO_MPTCP) }

// attackUDP sends a datagram to the target by CHIO_E2E_UDP_CALL: sendto,
// sendmsg, sendmmsg, connect-write (connect then write), or
// resolver-then-sendto (connect to the permitted resolver CHIO_E2E_DNS,
// then sendto the target on that connected socket).
func attackUDP() (string, error) {
	sa, family, err := target()
	if err != nil {
		return "", err
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	if err != nil {
		return "socket-" + refused(err), nil
	}
	defer unix.Close(fd)
	msg := payload()
	switch call := os.Getenv("CHIO_E2E_UDP_CALL"); call {
	case "sendto":
		err = unix.Sendto(fd, msg, 0, sa)
	case "sendmsg":
		_, err = unix.SendmsgN(fd, msg, nil, sa, 0)
	case "sendmmsg":
		err = sendmmsg(fd, msg, sa.(*unix.SockaddrInet4))
	case "connect-write":
		if err = unix.Connect(fd, sa); err == nil {
			_, err = write(fd, msg)
		}
	case "resolver-then-sendto":
		dns, perr := netip.ParseAddrPort(os.Getenv("CHIO_E2E_DNS"))
		if perr != nil {
			return "", fmt.Errorf("parse CHIO_E2E_DNS: %w", perr)
		}
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: dns.Addr().As4(), Port: int(dns.Port())}); err != nil {
			return "resolver-" + refused(err), nil
		}
		err = unix.Sendto(fd, msg, 0, sa)
	default:
		return "", fmt.Errorf("unknown CHIO_E2E_UDP_CALL %q", call)
	}
	if err != nil {
		return refused(err), nil
	}
	return "sent", nil
}

// sendmmsg sends two datagrams to sa in one sendmmsg(2) call; an error when
// the first is refused.
func sendmmsg(fd int, msg []byte, sa *unix.SockaddrInet4) error {
	raw := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: sa.Addr}
	binaryPort := (*[2]byte)(unsafe.Pointer(&raw.Port))
	binaryPort[0], binaryPort[1] = byte(sa.Port>>8), byte(sa.Port)
	iov := unix.Iovec{Base: &msg[0]}
	iov.SetLen(len(msg))
	var msgs [2]unix.Mmsghdr
	for i := range msgs {
		msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&raw))
		msgs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		msgs[i].Hdr.Iov = &iov
		msgs[i].Hdr.SetIovlen(1)
	}
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), 2, 0, 0, 0)
	runtime.KeepAlive(msgs)
	runtime.KeepAlive(raw)
	runtime.KeepAlive(msg)
	if errno != 0 {
		return errno
	}
	if n != 2 {
		return fmt.Errorf("sendmmsg sent %d of 2", n)
	}
	return nil
}

// attackSOMark sets the agent's mark (CHIO_E2E_MARK) on a TCP socket, then
// connects it. The outcome line starts with mark-set or mark-refused:ERRNO.
func attackSOMark() (string, error) {
	mark, _ := strconv.ParseUint(os.Getenv("CHIO_E2E_MARK"), 0, 32)
	state := ""
	out, err := exchange(unix.IPPROTO_TCP, func(fd int) error {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
			state = "mark-" + refused(err)
		} else {
			state = "mark-set"
		}
		return nil
	})
	return state + " " + out, err
}

// attackSOMarkWithNetRaw is attackSOMark from a thread that is uid 65534 and
// holds CAP_NET_RAW and no other capability: a workload given NET_RAW (a
// container runtime's default set, a file capability) but not NET_ADMIN.
func attackSOMarkWithNetRaw() (string, error) {
	runtime.LockOSThread() // the credentials changed are this thread's only
	if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
		return "", fmt.Errorf("keep capabilities: %w", err)
	}
	const nobody = 65534
	if _, _, errno := unix.RawSyscall(unix.SYS_SETRESGID, nobody, nobody, nobody); errno != 0 {
		return "", fmt.Errorf("setresgid: %w", errno)
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, nobody, nobody, nobody); errno != 0 {
		return "", fmt.Errorf("setresuid: %w", errno)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	data[0].Effective = 1 << unix.CAP_NET_RAW
	data[0].Permitted = 1 << unix.CAP_NET_RAW
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return "", fmt.Errorf("capset: %w", err)
	}
	return attackSOMark()
}

// attackHTTPRaw connects to the target, sends CHIO_E2E_DATA as it is (a
// hand-written HTTP request), and returns the answer.
func attackHTTPRaw() (string, error) { return exchange(unix.IPPROTO_TCP, nil) }

// attackTLS makes a TLS connection to the target with CHIO_E2E_SNI as the
// server name (sent as it is: Go keeps its case), and sends a GET for that
// name. Outcome tls-refused:ERROR when the handshake fails.
func attackTLS() (string, error) {
	sni := os.Getenv("CHIO_E2E_SNI")
	c, err := net.DialTimeout("tcp", os.Getenv("CHIO_E2E_ADDR"), 10*time.Second)
	if err != nil {
		return refused(err), nil
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// The attack is on the agent, not on the certificate: verification
	// would only hide what the agent let through.
	tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		return "tls-refused:" + err.Error(), nil
	}
	fmt.Fprintf(tc, "GET /sni HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", sni)
	b, err := io.ReadAll(tc)
	if len(b) == 0 && err != nil {
		return "tls-refused:" + err.Error(), nil
	}
	return "reply:" + strconv.Quote(string(b)), nil
}

// attackCgroupEscape moves the process into the cgroup CHIO_E2E_CGROUP
// (outside its workload), then connects to the target. The outcome line
// starts with moved or move-refused:ERRNO.
func attackCgroupEscape() (string, error) {
	state := "moved"
	err := os.WriteFile(os.Getenv("CHIO_E2E_CGROUP")+"/cgroup.procs", []byte(strconv.Itoa(os.Getpid())), 0)
	if err != nil {
		state = "move-" + refused(err)
	}
	out, err := exchange(unix.IPPROTO_TCP, nil)
	return state + " " + out, err
}

// attackFlood makes CHIO_E2E_N connections, CHIO_E2E_PAR at a time,
// alternating between an allowed request (a GET for api.allowed.test to
// CHIO_E2E_ALLOWED) and the payload to the target. It prints how many of
// each got which outcome: "allowed-ok A allowed-other B forbidden-reply C
// forbidden-refused D".
func attackFlood() (string, error) {
	n, _ := strconv.Atoi(os.Getenv("CHIO_E2E_N"))
	par, _ := strconv.Atoi(os.Getenv("CHIO_E2E_PAR"))
	allowed, err := netip.ParseAddrPort(os.Getenv("CHIO_E2E_ALLOWED"))
	if err != nil {
		return "", fmt.Errorf("parse CHIO_E2E_ALLOWED: %w", err)
	}
	forbidden, err := netip.ParseAddrPort(os.Getenv("CHIO_E2E_ADDR"))
	if err != nil {
		return "", fmt.Errorf("parse CHIO_E2E_ADDR: %w", err)
	}
	get := []byte("GET /flood HTTP/1.1\r\nHost: api.allowed.test\r\nConnection: close\r\n\r\n")
	var next, okAllowed, otherAllowed, replyForbidden, refusedForbidden atomic.Int64
	var firstOther sync.Once
	var wg sync.WaitGroup
	for w := 0; w < par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				if i%2 == 0 {
					out := dialOnce(allowed, get)
					if strings.HasPrefix(out, `reply:"HTTP/1.1 200 OK`) {
						okAllowed.Add(1)
					} else {
						otherAllowed.Add(1)
						firstOther.Do(func() { fmt.Fprintln(os.Stderr, "allowed:", out) })
					}
					continue
				}
				if out := dialOnce(forbidden, payload()); strings.HasPrefix(out, "reply:") {
					replyForbidden.Add(1)
				} else {
					refusedForbidden.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return fmt.Sprintf("allowed-ok %d allowed-other %d forbidden-reply %d forbidden-refused %d",
		okAllowed.Load(), otherAllowed.Load(), replyForbidden.Load(), refusedForbidden.Load()), nil
}

// dialOnce connects to dst, sends msg and returns what came back.
func dialOnce(dst netip.AddrPort, msg []byte) string {
	// A Sockaddr of its own: Connect writes into it.
	sa := &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "socket-" + refused(err)
	}
	if err := connect(fd, sa); err != nil {
		unix.Close(fd)
		return refused(err)
	}
	if _, err := write(fd, msg); err != nil {
		unix.Close(fd)
		return refused(err)
	}
	return answer(fd)
}

// io_uring, by hand: the smallest ring that submits one request and waits
// for its completion (include/uapi/linux/io_uring.h).

type ioSQRingOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type ioCQRingOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, CQEs, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type ioUringParams struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFd uint32
	Resv                                                                   [3]uint32
	SQOff                                                                  ioSQRingOffsets
	CQOff                                                                  ioCQRingOffsets
}

type ioUringSQE struct {
	Opcode      uint8
	Flags       uint8
	IOPrio      uint16
	Fd          int32
	Off         uint64 // addr2: the address length for CONNECT
	Addr        uint64
	Len         uint32
	OpFlags     uint32 // msg_flags for SENDMSG
	UserData    uint64
	BufIndex    uint16
	Personality uint16
	SpliceFdIn  int32
	Addr3       uint64
	Pad2        uint64
}

const (
	ioringOpSendmsg      = 9
	ioringOpConnect      = 16
	ioringSetupSQPoll    = 1 << 1
	ioringEnterGetEvents = 1 << 0
	ioringEnterSQWakeup  = 1 << 1
	ioringSQNeedWakeup   = 1 << 0
	iosqeAsync           = 1 << 4
	ioringOffSQRing      = 0
	ioringOffCQRing      = 0x8000000
	ioringOffSQEs        = 0x10000000
	ioringFeatSingleMmap = 1 << 0
	ioUringSQESize       = 64
	ioUringCQESize       = 16
	ioUringCQEResOffset  = 8
)

// ioUringOnce submits sqe on a fresh ring (mode: "" inline, "async" with
// IOSQE_ASYNC so an io-wq worker runs it, "sqpoll" submitted by the ring's
// kernel polling thread) and returns the completion's result.
func ioUringOnce(sqe ioUringSQE, mode string) (int32, error) {
	var p ioUringParams
	if mode == "sqpoll" {
		p.Flags = ioringSetupSQPoll
		p.SQThreadIdle = 1000
	}
	if mode == "async" {
		sqe.Flags |= iosqeAsync
	}
	rfd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 4, uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return 0, fmt.Errorf("io_uring_setup: %w", errno)
	}
	ring := int(rfd)
	defer unix.Close(ring)
	sqSize := int(p.SQOff.Array + p.SQEntries*4)
	cqSize := int(p.CQOff.CQEs + p.CQEntries*ioUringCQESize)
	if p.Features&ioringFeatSingleMmap != 0 {
		sqSize = max(sqSize, cqSize)
	}
	sq, err := unix.Mmap(ring, ioringOffSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return 0, fmt.Errorf("mmap sq ring: %w", err)
	}
	defer unix.Munmap(sq)
	cq := sq
	if p.Features&ioringFeatSingleMmap == 0 {
		if cq, err = unix.Mmap(ring, ioringOffCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
			return 0, fmt.Errorf("mmap cq ring: %w", err)
		}
		defer unix.Munmap(cq)
	}
	sqes, err := unix.Mmap(ring, ioringOffSQEs, int(p.SQEntries)*ioUringSQESize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return 0, fmt.Errorf("mmap sqes: %w", err)
	}
	defer unix.Munmap(sqes)
	u32 := func(b []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }

	// One SQE in slot 0, published by the tail's store.
	sqe.UserData = 0xC410
	*(*ioUringSQE)(unsafe.Pointer(&sqes[0])) = sqe
	tail := atomic.LoadUint32(u32(sq, p.SQOff.Tail))
	mask := *u32(sq, p.SQOff.RingMask)
	*u32(sq, p.SQOff.Array+4*(tail&mask)) = 0
	atomic.StoreUint32(u32(sq, p.SQOff.Tail), tail+1)

	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		flags := uintptr(ioringEnterGetEvents)
		if mode == "sqpoll" && atomic.LoadUint32(u32(sq, p.SQOff.Flags))&ioringSQNeedWakeup != 0 {
			flags |= ioringEnterSQWakeup
		}
		toSubmit := uintptr(1)
		if mode == "sqpoll" {
			toSubmit = 0
		}
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(ring), toSubmit, 1, flags, 0, 0)
		if errno != 0 && errno != unix.EINTR && errno != unix.EBUSY && errno != unix.EAGAIN {
			return 0, fmt.Errorf("io_uring_enter: %w", errno)
		}
		head := atomic.LoadUint32(u32(cq, p.CQOff.Head))
		if head != atomic.LoadUint32(u32(cq, p.CQOff.Tail)) {
			cmask := *u32(cq, p.CQOff.RingMask)
			off := p.CQOff.CQEs + (head&cmask)*ioUringCQESize
			res := *(*int32)(unsafe.Pointer(&cq[off+ioUringCQEResOffset]))
			atomic.StoreUint32(u32(cq, p.CQOff.Head), head+1)
			return res, nil
		}
		if mode == "sqpoll" {
			time.Sleep(time.Millisecond) // the poller has not submitted yet
		}
	}
	return 0, errors.New("io_uring: no completion in 20s")
}

// attackIOURingConnect connects a TCP socket to the target with
// IORING_OP_CONNECT (CHIO_E2E_IOURING: "", "async" or "sqpoll"), then sends
// the payload with write(2).
func attackIOURingConnect() (string, error) {
	sa, family, err := target()
	if err != nil {
		return "", err
	}
	if family != unix.AF_INET {
		return "", errors.New("io_uring attack is IPv4 only")
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return "socket-" + refused(err), nil
	}
	s4 := sa.(*unix.SockaddrInet4)
	raw := &unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: s4.Addr}
	(*[2]byte)(unsafe.Pointer(&raw.Port))[0] = byte(s4.Port >> 8)
	(*[2]byte)(unsafe.Pointer(&raw.Port))[1] = byte(s4.Port)
	res, err := ioUringOnce(ioUringSQE{Opcode: ioringOpConnect, Fd: int32(fd),
		Addr: uint64(uintptr(unsafe.Pointer(raw))), Off: unix.SizeofSockaddrInet4}, os.Getenv("CHIO_E2E_IOURING"))
	runtime.KeepAlive(raw)
	if err != nil {
		unix.Close(fd)
		var errno unix.Errno
		if errors.As(err, &errno) {
			return "iouring-" + refused(err), nil // io_uring itself refused (disabled?)
		}
		return "", err
	}
	if res < 0 {
		unix.Close(fd)
		return refused(unix.Errno(-res)), nil
	}
	if _, err := write(fd, payload()); err != nil {
		unix.Close(fd)
		return refused(err), nil
	}
	return answer(fd), nil
}

// attackIOURingSendmsg sends a UDP datagram to the target with
// IORING_OP_SENDMSG.
func attackIOURingSendmsg() (string, error) {
	sa, _, err := target()
	if err != nil {
		return "", err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	if err != nil {
		return "socket-" + refused(err), nil
	}
	defer unix.Close(fd)
	s4 := sa.(*unix.SockaddrInet4)
	raw := &unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: s4.Addr}
	(*[2]byte)(unsafe.Pointer(&raw.Port))[0] = byte(s4.Port >> 8)
	(*[2]byte)(unsafe.Pointer(&raw.Port))[1] = byte(s4.Port)
	msg := payload()
	iov := &unix.Iovec{Base: &msg[0]}
	iov.SetLen(len(msg))
	hdr := &unix.Msghdr{Name: (*byte)(unsafe.Pointer(raw)), Namelen: unix.SizeofSockaddrInet4, Iov: iov}
	hdr.SetIovlen(1)
	res, err := ioUringOnce(ioUringSQE{Opcode: ioringOpSendmsg, Fd: int32(fd),
		Addr: uint64(uintptr(unsafe.Pointer(hdr)))}, os.Getenv("CHIO_E2E_IOURING"))
	runtime.KeepAlive(raw)
	runtime.KeepAlive(iov)
	runtime.KeepAlive(hdr)
	runtime.KeepAlive(msg)
	if err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) {
			return "iouring-" + refused(err), nil
		}
		return "", err
	}
	if res < 0 {
		return refused(unix.Errno(-res)), nil
	}
	return "sent", nil
}

package bpf_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// Environment of the connect-loop helper process (see connectLoopChild).
const (
	envLoopAddr = "CHIO_BENCH_CONNECT_ADDR"
	envLoopN    = "CHIO_BENCH_CONNECT_N"
)

// connectLoopChild is the process BenchmarkConnectRedirect starts inside a
// cgroup (TestMain runs it when envLoopAddr is set) to time connect() calls
// there: the cgroup hooks apply to the calling task's cgroup, so the timed
// loop must run in a process placed in it. It returns the exit status.
func connectLoopChild(addr string) int {
	n, err := strconv.Atoi(os.Getenv(envLoopN))
	if err != nil || n < 1 {
		fmt.Printf("loop-error bad %s\n", envLoopN)
		return 2
	}
	ns, err := connectLoop(netip.MustParseAddrPort(addr), n)
	if err != nil {
		fmt.Printf("loop-error %v\n", err)
		return 2
	}
	fmt.Printf("loop-ns %d\n", ns)
	return 0
}

// connectLoop times n blocking connect() calls to dst with raw syscalls, so
// that what is measured is the kernel's connect path (hook included) rather
// than Go's poller. Each socket is closed with a reset (SO_LINGER 0) so that
// no TIME_WAIT state piles up over many iterations.
func connectLoop(dst netip.AddrPort, n int) (int64, error) {
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	linger := &unix.Linger{Onoff: 1, Linger: 0}
	var total time.Duration
	for i := 0; i < n; i++ {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return 0, fmt.Errorf("socket: %w", err)
		}
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, linger)
		start := time.Now()
		err = unix.Connect(fd, sa)
		total += time.Since(start)
		unix.Close(fd)
		if err != nil {
			return 0, fmt.Errorf("connect %s: %w", dst, err)
		}
	}
	return total.Nanoseconds(), nil
}

// BenchmarkConnectRedirect times connect() to a loopback listener from a
// process in three cgroups: one with no programs attached (nohook), one
// under the attach point but not protected (unprotected: the hook runs and
// lets it pass, which is what every process on a node pays when the agent
// attaches at the cgroup2 root), and a protected one whose connect() is
// redirected to the listener (redirected). Besides ns/connect it reports the
// connect4 program's own cost per run from the kernel's BPF statistics, and
// that cost as a percentage of nohook's connect() in the same run.
func BenchmarkConnectRedirect(b *testing.B) {
	testutil.RequireRoot(b)
	if err := bpf.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		b.Fatalf("ensure bpffs: %v", err)
	}
	outside := testutil.NewCgroup(b, "")
	parent := testutil.NewCgroup(b, "")
	plain := testutil.NewCgroup(b, parent.Path)
	protected := testutil.NewCgroup(b, parent.Path)
	objs, err := bpf.Load(bpf.Options{})
	if errors.Is(err, bpf.ErrNotSupported) {
		testutil.Skip(b, "kernel lacks a needed eBPF feature: "+err.Error())
	}
	if err != nil {
		b.Fatalf("load: %v", err)
	}
	b.Cleanup(func() { objs.Close() })
	if err := objs.AttachCgroup(parent.Path); err != nil {
		b.Fatalf("attach: %v", err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatalf("listen: %v", err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	lnAddr := ln.Addr().(*net.TCPAddr).AddrPort()
	if err := objs.Protect(protected.ID, bpf.Workload{ID: 1, Listen4: lnAddr}); err != nil {
		b.Fatalf("protect: %v", err)
	}
	// A protected process dials a port where nothing listens: only the
	// redirect makes its connect() succeed, so a broken hook fails the run.
	probe, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatalf("listen: %v", err)
	}
	elsewhere := probe.Addr().(*net.TCPAddr).AddrPort()
	probe.Close()

	connect4 := connect4Program(b, objs)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		testutil.Skip(b, "BPF run statistics unavailable: "+err.Error())
	}
	b.Cleanup(func() { stats.Close() })

	// nohook's connects and their time in this invocation (all its -count
	// runs, which go first), for the others' ratio.
	var bareNs, bareN int64
	for _, c := range []struct {
		name string
		cg   testutil.Cgroup
		dst  netip.AddrPort
	}{
		{"nohook", outside, lnAddr},
		{"unprotected", plain, lnAddr},
		{"redirected", protected, elsewhere},
	} {
		b.Run(c.name, func(b *testing.B) {
			before := progStats(b, connect4)
			ns := runConnectLoop(b, c.cg, c.dst, b.N)
			after := progStats(b, connect4)
			perConnect := float64(ns) / float64(b.N)
			b.ReportMetric(perConnect, "ns/connect")
			if c.name == "nohook" {
				bareNs += ns
				bareN += int64(b.N)
			}
			if runs := after.RunCount - before.RunCount; runs > 0 {
				hook := float64((after.Runtime - before.Runtime).Nanoseconds()) / float64(runs)
				b.ReportMetric(hook, "hook-ns/run")
				if bareN > 0 {
					// The target: ≤ 2% of a bare connect() in the same run.
					b.ReportMetric(100*hook/(float64(bareNs)/float64(bareN)), "hook-%-of-bare")
				}
			}
		})
	}
}

func connect4Program(b *testing.B, objs *bpf.Objects) *ebpf.Program {
	for _, a := range objs.Attachments() {
		if a.Hook != "cgroup/connect4" {
			continue
		}
		_, id, err := a.IDs()
		if err != nil {
			b.Fatalf("connect4 ids: %v", err)
		}
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
		if err != nil {
			b.Fatalf("open connect4 program: %v", err)
		}
		b.Cleanup(func() { p.Close() })
		return p
	}
	b.Fatal("no cgroup/connect4 attachment")
	return nil
}

func progStats(b *testing.B, p *ebpf.Program) *ebpf.ProgramStats {
	st, err := p.Stats()
	if err != nil {
		b.Fatalf("program stats: %v", err)
	}
	return st
}

// runConnectLoop runs the helper in cg and returns the nanoseconds its n
// connect() calls took.
func runConnectLoop(b *testing.B, cg testutil.Cgroup, dst netip.AddrPort, n int) int64 {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envLoopAddr+"="+dst.String(), envLoopN+"="+strconv.Itoa(n))
	cg.CommandIn(b, cmd)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatalf("start connect loop: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			b.Fatalf("connect loop: %v: %s", err, out.String())
		}
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		b.Fatalf("connect loop of %d connects did not finish in 2 minutes", n)
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "loop-ns "); ok {
			ns, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return ns
			}
		}
	}
	b.Fatalf("connect loop printed no timing: %s", out.String())
	return 0
}

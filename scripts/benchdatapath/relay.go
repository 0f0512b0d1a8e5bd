package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
)

// The Go relay is the floor of any Go proxy that decides on a connection's
// first bytes: it accepts, reads what the client sends first, dials the
// upstream, replays those bytes and copies both ways with io.Copy (splice),
// like the agent, but decides nothing, signs nothing and has no eBPF in
// front of it. What chio-agent adds beyond it is the price of its own work;
// what the relay adds over direct is the price of a Go hop on this machine.
// It runs as its own process, this program re-executed as "relay".

func relayMain(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: benchdatapath relay LISTEN TARGET")
		return 2
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 1
	}
	target := args[1]
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "relay:", err)
			return 1
		}
		go relayConn(c.(*net.TCPConn), target)
	}
}

func relayConn(c *net.TCPConn, target string) {
	defer c.Close()
	buf := make([]byte, 16<<10)
	n, err := c.Read(buf)
	if err != nil {
		return
	}
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	up := u.(*net.TCPConn)
	defer up.Close()
	if _, err := up.Write(buf[:n]); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		io.Copy(up, c)
		up.CloseWrite()
		close(done)
	}()
	io.Copy(c, up)
	c.CloseWrite()
	<-done
}

// startGoRelay runs the Go relay (this program re-executed as "relay") in
// front of up.
func startGoRelay(ctx context.Context, self, work string, up netip.AddrPort) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	return startServer(ctx, "relay", work, addr, exec.Command(self, "relay", addr.String(), up.String()))
}

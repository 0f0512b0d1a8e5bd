package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// The client is the same code for every mode: it dials the address it is
// given and times the connection. Through chio-agent it runs inside the
// protected cgroup and dials the real upstream (the redirect is
// transparent); through HAProxy it dials HAProxy's frontend; direct, it
// dials the upstream from outside any protected cgroup.
//
// It reports on stdout, one line per measurement, so the driver sees raw
// figures rather than a summary:
//
//	lat NS            connect → first response byte of one connection
//	bulk BYTES NS     one bulk transfer: bytes read and connect → EOF
//	done              everything measured (then, with -hold, it waits for
//	                  stdin to close so the driver can read the agent's BPF
//	                  statistics while the programs are still loaded)
type clientOptions struct {
	addr    string        // host:port to dial
	host    string        // HTTP Host header (the name the policy allows)
	kind    string        // "setup" or "bulk"
	n       int           // measured connections (setup) or transfers (bulk)
	warmup  int           // unmeasured connections first (setup only)
	bytes   int64         // bytes per bulk transfer
	timeout time.Duration // bound on each connection
	hold    bool          // wait for stdin EOF after "done"
	think   time.Duration // CPU spent between connect and request (setup)
}

func clientMain(args []string) int {
	var o clientOptions
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.StringVar(&o.addr, "addr", "", "address to dial")
	fs.StringVar(&o.host, "host", "", "HTTP Host header")
	fs.StringVar(&o.kind, "kind", "setup", "setup or bulk")
	fs.IntVar(&o.n, "n", 100, "measured connections or transfers")
	fs.IntVar(&o.warmup, "warmup", 0, "unmeasured connections first")
	fs.Int64Var(&o.bytes, "bytes", 1<<30, "bytes per bulk transfer")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "bound on each connection")
	fs.BoolVar(&o.hold, "hold", false, "after done, wait for stdin to close")
	fs.DurationVar(&o.think, "think", 0, "CPU time spent between connect and request (setup)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	err := runClient(o, out)
	if err != nil {
		fmt.Fprintf(out, "error %v\n", err)
		out.Flush()
		return 1
	}
	fmt.Fprintln(out, "done")
	out.Flush()
	if o.hold {
		// Bounded: the driver closes stdin within moments of "done".
		done := make(chan struct{})
		go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
		}
	}
	return 0
}

func runClient(o clientOptions, out io.Writer) error {
	switch o.kind {
	case "setup":
		small := []byte("GET /small HTTP/1.1\r\nHost: " + o.host + "\r\nConnection: close\r\n\r\n")
		buf := make([]byte, 4096)
		for i := 0; i < o.warmup+o.n; i++ {
			if i == o.warmup {
				// The driver reads the proxy's CPU time from here on.
				fmt.Fprintln(out, "start")
				if f, ok := out.(interface{ Flush() error }); ok {
					f.Flush()
				}
			}
			d, err := setupOnce(o, small, buf)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			if i >= o.warmup {
				fmt.Fprintf(out, "lat %d\n", d.Nanoseconds())
			}
		}
	case "bulk":
		req := []byte(fmt.Sprintf("GET /bulk?bytes=%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", o.bytes, o.host))
		buf := make([]byte, 256<<10)
		for i := 0; i < o.n; i++ {
			n, d, err := bulkOnce(o, req, buf)
			if err != nil {
				return fmt.Errorf("transfer %d: %w", i, err)
			}
			fmt.Fprintf(out, "bulk %d %d\n", n, d.Nanoseconds())
		}
	default:
		return fmt.Errorf("unknown kind %q", o.kind)
	}
	return nil
}

var okStatus = []byte("HTTP/1.1 200 ")

// setupOnce opens one connection, sends one small request, and returns the
// time from before connect() to the first response byte. The whole response
// is read and must be a 200: a refusal (the agent's 403) is fast and would
// otherwise pass for a low latency.
func setupOnce(o clientOptions, req, buf []byte) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", o.addr, o.timeout)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(start.Add(o.timeout))
	// A client that computes before its first message (a TLS client's key
	// share): CPU, not a sleep, so that it competes for the processors as
	// that work would.
	for t := time.Now(); time.Since(t) < o.think; {
	}
	if _, err := c.Write(req); err != nil {
		return 0, fmt.Errorf("write request: %w", err)
	}
	n, err := c.Read(buf)
	if n == 0 {
		return 0, fmt.Errorf("read response: %w", err)
	}
	first := time.Since(start)
	got := n
	for err == nil && got < len(buf) {
		n, err = c.Read(buf[got:])
		got += n
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("read response: %w", err)
	}
	if !bytes.HasPrefix(buf[:got], okStatus) {
		line, _, _ := bytes.Cut(buf[:got], []byte("\r\n"))
		return 0, fmt.Errorf("response is not a 200: %q", line)
	}
	return first, nil
}

// bulkOnce streams one large response to EOF and returns the bytes read
// (head included) and the time from before connect() to EOF.
func bulkOnce(o clientOptions, req, buf []byte) (int64, time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", o.addr, o.timeout)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(start.Add(o.timeout))
	if _, err := c.Write(req); err != nil {
		return 0, 0, fmt.Errorf("write request: %w", err)
	}
	var total int64
	first := true
	for {
		n, err := c.Read(buf)
		if first && n > 0 {
			if !bytes.HasPrefix(buf[:n], okStatus) {
				return 0, 0, fmt.Errorf("response is not a 200: %q", buf[:min(n, 40)])
			}
			first = false
		}
		total += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return total, 0, fmt.Errorf("read: %w", err)
		}
	}
	d := time.Since(start)
	if total < o.bytes {
		return total, 0, fmt.Errorf("short transfer: %d of %d bytes", total, o.bytes)
	}
	return total, d, nil
}

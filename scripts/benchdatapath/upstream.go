package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"time"
)

// maxBulk bounds what one bulk request may ask for, so that a stray request
// cannot keep the upstream streaming for long.
const maxBulk = 8 << 30

// upstream is the destination every mode reaches: a plain net/http server on
// 127.0.0.1 with a small response (/small, for connection setup) and a
// streamed one (/bulk?bytes=N, for throughput).
type upstream struct {
	srv  *http.Server
	addr netip.AddrPort
}

func startUpstream() (*upstream, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("upstream listen: %w", err)
	}
	chunk := make([]byte, 256<<10)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/small", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/bulk", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if err != nil || n < 0 || n > maxBulk {
			http.Error(w, "bytes must be 0.."+strconv.Itoa(maxBulk), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// Every measured connection is new: keep-alive would only let the
	// server hold idle connections the clients have already closed.
	srv.SetKeepAlivesEnabled(false)
	go srv.Serve(ln)
	return &upstream{srv: srv, addr: ln.Addr().(*net.TCPAddr).AddrPort()}, nil
}

func (u *upstream) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	u.srv.Shutdown(ctx)
}

// upstreamMain runs the upstream alone until stdin closes, printing its
// address: for profiling or tracing one agent by hand (strace, perf)
// against the benchmark's upstream.
func upstreamMain() int {
	up, err := startUpstream()
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		return 1
	}
	defer up.close()
	fmt.Println(up.addr)
	io.Copy(io.Discard, os.Stdin)
	return 0
}

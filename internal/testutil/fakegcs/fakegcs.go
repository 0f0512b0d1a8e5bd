// Package fakegcs runs fake-gcs-server (built into .tools/bin by
// scripts/deps) on loopback for tests, and writes objects to it with the
// Cloud Storage SDK itself, which STORAGE_EMULATOR_HOST points at it. One
// in-memory server serves the whole test binary (Shared), each test making
// buckets of its own; a test that stops and restarts its server starts one
// of its own on disk (Start).
package fakegcs

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"cloud.google.com/go/storage"

	"github.com/backbay-labs/chio-agent/internal/testutil/emulator"
)

// Server is a running fake-gcs-server.
type Server struct {
	*emulator.Proc
}

var shared emulator.Shared[*Server]

// Shared is the test binary's in-memory server, started by its first
// caller.
func Shared(t testing.TB) *Server {
	t.Helper()
	bin := emulator.Tool(t, "fake-gcs-server")
	return shared.Get(t, func(dir string) (*Server, error) { return start(bin, dir, "") })
}

// Start runs a server of t's own keeping its buckets on disk (the
// filesystem backend) in a directory of t's, so that they survive Stop and
// Restart; it is stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := emulator.Tool(t, "fake-gcs-server")
	return emulator.Own(t, func(dir string) (*Server, error) { return start(bin, dir, filepath.Join(dir, "data")) })
}

// start runs fake-gcs-server in dir, in memory or (root set) on disk
// under root.
func start(bin, dir, root string) (*Server, error) {
	p, err := emulator.Start("fake-gcs-server", bin, dir, func(port int) []string {
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		args := []string{"-scheme", "http", "-host", "127.0.0.1", "-port", strconv.Itoa(port),
			"-public-host", addr, "-external-url", "http://" + addr, "-log-level", "warn"}
		if root == "" {
			return append(args, "-backend", "memory")
		}
		return append(args, "-backend", "filesystem", "-filesystem-root", root)
	})
	if err != nil {
		return nil, err
	}
	return &Server{Proc: p}, nil
}

// Env points the Cloud Storage SDK of this process at addr (the server's,
// or an unreachable one) for t: STORAGE_EMULATOR_HOST, which also turns
// credentials off, so nothing beyond loopback is asked.
func Env(t testing.TB, addr string) {
	t.Setenv("STORAGE_EMULATOR_HOST", addr)
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
}

func (s *Server) client(t testing.TB) *storage.Client {
	t.Helper()
	Env(t, s.Addr())
	c, err := storage.NewClient(context.Background())
	if err != nil {
		t.Fatalf("cloud storage client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Bucket makes a bucket named for t and returns its name; it also sets
// t's STORAGE_EMULATOR_HOST to this server.
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	return s.BucketNamed(t, emulator.BucketName(t))
}

// BucketNamed makes the bucket name (a manifest's, say) and returns it; it
// also sets t's STORAGE_EMULATOR_HOST to this server.
func (s *Server) BucketNamed(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.client(t).Bucket(name).Create(ctx, "chio-test", nil); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	return name
}

// Put writes an object (a new generation of it); it also sets t's
// STORAGE_EMULATOR_HOST to this server.
func (s *Server) Put(t testing.TB, bucket, object string, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := s.client(t).Bucket(bucket).Object(object).NewWriter(ctx)
	if _, err := w.Write(data); err != nil {
		t.Fatalf("put gs://%s/%s: %v", bucket, object, err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("put gs://%s/%s: %v", bucket, object, err)
	}
}

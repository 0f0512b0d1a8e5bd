// Package azurite runs Microsoft's Azurite blob service (installed from npm
// into .tools by scripts/deps) on loopback for tests, and writes blobs to it
// with the Azure SDK itself. One in-memory server serves the whole test
// binary (Shared), each test making containers of its own; a test that
// stops and restarts its server starts one of its own on disk (Start).
package azurite

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"

	"github.com/backbay-labs/chio-agent/internal/testutil/emulator"
)

// Account is Azurite's well-known development account, and Key its
// published key.
const (
	Account = "devstoreaccount1"
	Key     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Server is a running Azurite blob service.
type Server struct {
	*emulator.Proc
	client *azblob.Client
}

var shared emulator.Shared[*Server]

// Shared is the test binary's in-memory server, started by its first
// caller.
func Shared(t testing.TB) *Server {
	t.Helper()
	bin := emulator.Tool(t, "azurite-blob")
	return shared.Get(t, func(dir string) (*Server, error) { return start(bin, dir, "") })
}

// Start runs a server of t's own keeping its containers on disk in a
// directory of t's, so that they survive Stop and Restart (Stop lets it
// end gracefully, saving its metadata, see emulator.Proc.Graceful); it is
// stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := emulator.Tool(t, "azurite-blob")
	return emulator.Own(t, func(dir string) (*Server, error) {
		s, err := start(bin, dir, filepath.Join(dir, "data"))
		if err == nil {
			s.Graceful = true
		}
		return s, err
	})
}

// start runs Azurite in dir, in memory or (location set) on disk there.
func start(bin, dir, location string) (*Server, error) {
	p, err := emulator.Start("azurite-blob", bin, dir, func(port int) []string {
		// No telemetry (nothing leaves loopback), and any API version the
		// SDK speaks.
		args := []string{"--blobHost", "127.0.0.1", "--blobPort", fmt.Sprint(port),
			"--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent"}
		if location == "" {
			return append(args, "--inMemoryPersistence")
		}
		return append(args, "--location", location)
	})
	if err != nil {
		return nil, err
	}
	c, err := azblob.NewClientFromConnectionString(ConnectionString(p.Addr()), nil)
	if err != nil {
		p.Stop()
		return nil, err
	}
	return &Server{Proc: p, client: c}, nil
}

// ConnectionString is the development account's connection string for a
// blob service at addr.
func ConnectionString(addr string) string {
	return fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=http://%s/%s;", Account, Key, addr, Account)
}

// Env points the Azure blob source of this process at addr (the server's,
// or an unreachable one) for t, through AZURE_STORAGE_CONNECTION_STRING.
func Env(t testing.TB, addr string) {
	t.Setenv("AZURE_STORAGE_CONNECTION_STRING", ConnectionString(addr))
}

// Container makes a container named for t and returns its name.
func (s *Server) Container(t testing.TB) string {
	t.Helper()
	return s.ContainerNamed(t, emulator.BucketName(t))
}

// ContainerNamed makes the container name (a manifest's, say) and returns
// it.
func (s *Server) ContainerNamed(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.client.CreateContainer(ctx, name, nil); err != nil {
		t.Fatalf("create container %s: %v", name, err)
	}
	return name
}

// Put writes a blob.
func (s *Server) Put(t testing.TB, container, blob string, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.client.UploadStream(ctx, container, blob, bytes.NewReader(data), nil); err != nil {
		t.Fatalf("put azblob://%s/%s/%s: %v", Account, container, blob, err)
	}
}

// Package fakes3 runs gofakes3 (an S3 API server, built into .tools/bin by
// scripts/deps) on loopback for tests, and writes objects to it with the
// AWS SDK itself. One in-memory server serves the whole test binary
// (Shared), each test making buckets of its own; a test that stops and
// restarts its server starts one of its own on disk (Start).
package fakes3

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backbay-labs/chio-agent/internal/testutil/emulator"
)

// Server is a running gofakes3.
type Server struct {
	*emulator.Proc
	client *s3.Client
}

var shared emulator.Shared[*Server]

// Shared is the test binary's in-memory server, started by its first
// caller.
func Shared(t testing.TB) *Server {
	t.Helper()
	bin := emulator.Tool(t, "gofakes3")
	return shared.Get(t, func(dir string) (*Server, error) { return start(bin, dir, "memory") })
}

// Start runs a server of t's own keeping its buckets on disk (gofakes3's
// bolt backend) in a directory of t's, so that they survive Stop and
// Restart; it is stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := emulator.Tool(t, "gofakes3")
	return emulator.Own(t, func(dir string) (*Server, error) { return start(bin, dir, "bolt") })
}

// start runs gofakes3 in dir with backend memory, or bolt (a database in
// dir).
func start(bin, dir, backend string) (*Server, error) {
	p, err := emulator.Start("gofakes3", bin, dir, func(port int) []string {
		args := []string{"-backend", backend, "-host", fmt.Sprintf("127.0.0.1:%d", port), "-quiet"}
		if backend == "bolt" {
			args = append(args, "-bolt.db", filepath.Join(dir, "s3.db"))
		}
		return args
	})
	if err != nil {
		return nil, err
	}
	return &Server{Proc: p, client: s3.New(s3.Options{
		BaseEndpoint: aws.String(endpoint(p.Addr())),
		Region:       "us-east-1",
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider("chio-test", "chio-test-secret", ""),
	})}, nil
}

func endpoint(addr string) string { return "http://" + addr }

// Endpoint is the server's URL.
func (s *Server) Endpoint() string { return endpoint(s.Addr()) }

// Env points the AWS SDK's default configuration of this process at
// endpoint (the server's, or an unreachable one) for t: the endpoint
// override, a region and static test credentials, and no shared config
// files or instance metadata (nothing beyond loopback is asked).
func Env(t testing.TB, endpoint string) {
	t.Setenv("AWS_ENDPOINT_URL_S3", endpoint)
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "chio-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "chio-test-secret")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

// Bucket makes a bucket named for t (unique in the test binary) and
// returns its name.
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	return s.BucketNamed(t, emulator.BucketName(t))
}

// BucketNamed makes the bucket name (a manifest's, say) and returns it.
func (s *Server) BucketNamed(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	return name
}

// Put writes an object.
func (s *Server) Put(t testing.TB, bucket, key string, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(data)}); err != nil {
		t.Fatalf("put s3://%s/%s: %v", bucket, key, err)
	}
}

// Package dynalite runs dynalite (DynamoDB's API on LevelDB, installed from
// npm into .tools by scripts/deps) on loopback for tests driving the AWS
// SDK's DynamoDB client. One in-memory server serves the whole test binary
// (Shared), each test using tables of its own (Table); a test that stops
// and restarts its server starts one of its own on disk (Start).
package dynalite

import (
	"fmt"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil/emulator"
)

// Server is a running dynalite.
type Server struct{ *emulator.Proc }

var shared emulator.Shared[*Server]

// Shared is the test binary's in-memory server, started by its first
// caller.
func Shared(t testing.TB) *Server {
	t.Helper()
	bin := emulator.Tool(t, "dynalite")
	return shared.Get(t, func(dir string) (*Server, error) { return start(bin, dir, "") })
}

// Start runs a server of t's own keeping its tables on disk in a directory
// of t's, so that they survive Stop and Restart; it is stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := emulator.Tool(t, "dynalite")
	return emulator.Own(t, func(dir string) (*Server, error) { return start(bin, dir, dir+"/data") })
}

func start(bin, dir, path string) (*Server, error) {
	p, err := emulator.Start("dynalite", bin, dir, func(port int) []string {
		// Tables become ACTIVE at once (default: half a second later).
		args := []string{"--host", "127.0.0.1", "--port", fmt.Sprint(port),
			"--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"}
		if path != "" {
			args = append(args, "--path", path)
		}
		return args
	})
	if err != nil {
		return nil, err
	}
	return &Server{Proc: p}, nil
}

// Endpoint is the server's URL.
func (s *Server) Endpoint() string { return "http://" + s.Addr() }

// Env points the AWS SDK's default configuration of this process at
// endpoint (the server's, or an unreachable one) for t:
// AWS_ENDPOINT_URL_DYNAMODB, a region and static test credentials, and no
// shared config files or instance metadata (nothing beyond loopback is
// asked).
func Env(t testing.TB, endpoint string) {
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL_DYNAMODB":   endpoint,
		"AWS_ENDPOINT_URL":            "",
		"AWS_REGION":                  "us-east-1",
		"AWS_ACCESS_KEY_ID":           "chio-test",
		"AWS_SECRET_ACCESS_KEY":       "chio-test-secret",
		"AWS_SESSION_TOKEN":           "",
		"AWS_PROFILE":                 "",
		"AWS_CONFIG_FILE":             "/nonexistent/aws-config",
		"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
		"AWS_EC2_METADATA_DISABLED":   "true",
	} {
		t.Setenv(k, v)
	}
}

// Table is a table name for t, unique in the test binary (the table itself
// is created by the sink under test, or not).
func Table(t testing.TB) string { return emulator.BucketName(t) }

package config

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestResolveNATSSink: a nats:// or tls:// sink ships beside a local log
// whose path is receipts.path, else the shape's default; local sinks keep
// meaning the log itself; malformed sinks stop the start naming the fault.
func TestResolveNATSSink(t *testing.T) {
	dir := t.TempDir()
	d := Defaults{Receipts: "/default/r.db"}
	resolve := func(t *testing.T, yaml string, e map[string]string) (*Common, error) {
		t.Helper()
		cfg := filepath.Join(dir, "kernel.yaml")
		os.WriteFile(cfg, []byte("policy: /p.yaml\nsigning_key: /k\n"+yaml), 0o600)
		return Resolve(context.Background(), Flags{Config: cfg}, d, env(e))
	}
	for _, tc := range []struct {
		name, yaml string
		env        map[string]string
		path       string
		servers    []string
	}{
		{"local path as before", "receipts: {sink: /file/r.db}\n", nil, "/file/r.db", nil},
		{"file URL as before", "receipts: {sink: \"file:///file/r.db\"}\n", nil, "/file/r.db", nil},
		{"nothing: the default", "", nil, "/default/r.db", nil},
		{"receipts.path alone", "receipts: {path: /p/r.db}\n", nil, "/p/r.db", nil},
		{"nats with default log", "receipts: {sink: \"nats://10.0.0.1:4222,10.0.0.2:4222\"}\n", nil,
			"/default/r.db", []string{"nats://10.0.0.1:4222", "nats://10.0.0.2:4222"}},
		{"nats with receipts.path", "receipts: {sink: \"nats://a:4222,tls://b:4443\", path: /p/r.db, nats: {stream: S, replicas: 3, token_file: /t}}\n", nil,
			"/p/r.db", []string{"nats://a:4222", "tls://b:4443"}},
		{"tls from the environment", "", map[string]string{EnvReceiptSink: "tls://nats.example:4222"},
			"/default/r.db", []string{"tls://nats.example:4222"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := resolve(t, tc.yaml, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if c.ReceiptPath != tc.path || !slices.Equal(c.ShipServers, tc.servers) {
				t.Fatalf("log %q servers %q; want %q %q", c.ReceiptPath, c.ShipServers, tc.path, tc.servers)
			}
		})
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"http sink", "receipts: {sink: \"http://a:4222\"}\n", `"http"`},
		{"no port", "receipts: {sink: \"nats://a\"}\n", "want host:port"},
		{"password in URL", "receipts: {sink: \"nats://u:hunter2@a:4222\"}\n", "credentials in the URL are refused"},
		{"empty server", "receipts: {sink: \"nats://a:4222,,b:4222\"}\n", "empty server"},
		{"sink and path disagree", "receipts: {sink: /a.db, path: /b.db}\n", "receipts.path names /b.db"},
		{"nats settings without nats", "receipts: {sink: /a.db, nats: {stream: S}}\n", "receipts.nats is set"},
		{"unknown nats key", "receipts: {sink: \"nats://a:4222\", nats: {passwd: x}}\n", "passwd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := resolve(t, tc.yaml, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want it to say %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error %q repeats the password", err)
			}
		})
	}
}

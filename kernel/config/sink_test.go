package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/receipts/sink"
)

// sinkResolver resolves kernel.yaml's receipts section yaml (after a policy
// and a key) with environment e, the default log /default/r.db.
func sinkResolver(t *testing.T) func(t *testing.T, yaml string, e map[string]string) (*Common, error) {
	dir := t.TempDir()
	return func(t *testing.T, yaml string, e map[string]string) (*Common, error) {
		t.Helper()
		cfg := filepath.Join(dir, "kernel.yaml")
		os.WriteFile(cfg, []byte("policy: /p.yaml\nsigning_key: /k\n"+yaml), 0o600)
		return Resolve(context.Background(), Flags{Config: cfg}, Defaults{Receipts: "/default/r.db"}, env(e))
	}
}

// TestResolveNATSSink: a nats:// or tls:// sink ships beside a local log
// whose path is receipts.path, else the shape's default; local sinks keep
// meaning the log itself; malformed sinks stop the start naming the fault.
func TestResolveNATSSink(t *testing.T) {
	resolve := sinkResolver(t)
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

// TestResolveStoreSink: a store sink (dynamodb://, s3://, gs://, azblob://)
// ships beside the local log at receipts.path (else the default), with
// receipts.store's options; bigquery:// is refused naming the gs:// route;
// malformed store URLs and another sink's settings stop the start naming
// the fault.
func TestResolveStoreSink(t *testing.T) {
	resolve := sinkResolver(t)
	c, err := resolve(t, "receipts: {sink: \"dynamodb://chio-receipts\", path: /p/r.db, store: {window: 4, max_backlog: 500, create_table: true}}\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	o, ok := c.ShipOptions()
	if c.ReceiptPath != "/p/r.db" || c.ShipStore != "dynamodb://chio-receipts" || len(c.ShipServers) != 0 || !ok ||
		o.StoreURL != "dynamodb://chio-receipts" || !o.CreateTable || o.Window != 4 || o.MaxBacklog != 500 || len(o.Servers) != 0 {
		t.Fatalf("log %q store %q servers %v; options %+v", c.ReceiptPath, c.ShipStore, c.ShipServers, o)
	}
	c, err = resolve(t, "", map[string]string{EnvReceiptSink: "dynamodb://chio-receipts"})
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := c.ShipOptions(); c.ReceiptPath != "/default/r.db" || !ok || o.StoreURL != "dynamodb://chio-receipts" || o.CreateTable {
		t.Fatalf("from the environment: log %q options %+v", c.ReceiptPath, o)
	}
	if c, err := resolve(t, "receipts: {sink: /a.db}\n", nil); err != nil || c.ShipStore != "" {
		t.Fatalf("a local sink: store %q, %v", c.ShipStore, err)
	}
	// The object store schemes take the store path too (sink.Check parses
	// them; until their sink is built it says so, never "unsupported").
	for _, u := range []string{"s3://bucket/prefix", "gs://bucket/prefix", "azblob://account/container/prefix"} {
		c, err := resolve(t, "", map[string]string{EnvReceiptSink: u})
		switch {
		case err == nil && c.ShipStore != u:
			t.Fatalf("%s: store %q", u, c.ShipStore)
		case err != nil && (errors.Is(err, ErrUnsupportedScheme) || !strings.Contains(err.Error(), "receipt sink")):
			t.Fatalf("%s: %v, want the store sink's own verdict", u, err)
		}
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"bigquery", "receipts: {sink: \"bigquery://proj.chio.receipts\"}\n", "gs://BUCKET/PREFIX"},
		{"table name too short", "receipts: {sink: \"dynamodb://ab\"}\n", `table name "ab"`},
		{"table name with a slash", "receipts: {sink: \"dynamodb://t1/t2\"}\n", "want dynamodb://TABLE"},
		{"credentials in a dynamodb URL", "receipts: {sink: \"dynamodb://AKIA:hunter2@table\"}\n", "credentials in the URL are refused"},
		{"dynamodb query", "receipts: {sink: \"dynamodb://table?create=1\"}\n", "want dynamodb://TABLE"},
		{"store settings with nats", "receipts: {sink: \"nats://a:4222\", store: {window: 2}}\n", "receipts.store is set"},
		{"store settings with a local sink", "receipts: {sink: /a.db, store: {window: 2}}\n", "receipts.store is set"},
		{"nats settings with a store", "receipts: {sink: \"dynamodb://table\", nats: {stream: S}}\n", "receipts.nats is set"},
		{"unknown store key", "receipts: {sink: \"dynamodb://table\", store: {create: true}}\n", "create"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := resolve(t, tc.yaml, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want it to say %q", err, tc.want)
			}
			if tc.name == "bigquery" && !errors.Is(err, sink.ErrBigQuery) {
				t.Fatalf("err = %v; want sink.ErrBigQuery", err)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error %q repeats the secret", err)
			}
		})
	}
}

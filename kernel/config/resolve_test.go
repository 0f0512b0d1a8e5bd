package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/kernel"
)

// TestResolveFlagsBeatEnvBeatFile: one precedence for every setting both
// shapes share, the signing key included (docs/sidecar.md said the node
// agent's --key gave way to CHIO_SIGNING_KEY; the binary did the opposite).
func TestResolveFlagsBeatEnvBeatFile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "kernel.yaml")
	os.WriteFile(cfg, []byte("policy: /file/p.yaml\nreceipts: {sink: /file/r.db, mode: async}\nsigning_key: /file/key\nlog_level: warn\n"), 0o600)
	d := Defaults{Receipts: "/default/r.db", LogLevel: "info"}

	c, err := Resolve(context.Background(), Flags{Config: cfg}, d, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.PolicySource != "/file/p.yaml" || c.ReceiptPath != "/file/r.db" || c.ReceiptMode != "async" || c.KeyFile != "/file/key" || c.KeySeed != "" || c.LogLevel != "warn" {
		t.Fatalf("file only: %+v", c)
	}
	e := map[string]string{EnvKernelConfigPath: cfg, EnvPolicySource: "/env/p.yaml", EnvReceiptSink: "/env/r.db", EnvSigningKey: seedHex, EnvLogLevel: "debug"}
	c, err = Resolve(context.Background(), Flags{}, d, env(e))
	if err != nil {
		t.Fatal(err)
	}
	if c.ConfigPath != cfg || c.PolicySource != "/env/p.yaml" || c.ReceiptPath != "/env/r.db" || c.KeySeed != seedHex || c.KeyFile != "" || c.LogLevel != "debug" {
		t.Fatalf("environment over file: %+v", c)
	}
	c, err = Resolve(context.Background(), Flags{Policy: "/flag/p.yaml", Receipts: "/flag/r.db", ReceiptMode: "sync", KeyFile: "/flag/key", LogLevel: "error"}, d, env(e))
	if err != nil {
		t.Fatal(err)
	}
	if c.PolicySource != "/flag/p.yaml" || c.ReceiptPath != "/flag/r.db" || c.ReceiptMode != "sync" || c.KeyFile != "/flag/key" || !c.KeyFromFlag || c.KeySeed != "" || c.LogLevel != "error" {
		t.Fatalf("flags over environment: %+v", c)
	}
	// Nothing named: the shape's defaults.
	c, err = Resolve(context.Background(), Flags{Policy: "/p.yaml", KeyFile: "/k"}, d, env(nil))
	if err != nil || c.ReceiptPath != "/default/r.db" || c.LogLevel != "info" || c.ReceiptMode != "sync" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	// The key the flag names is the key loaded, whatever the variable says.
	keyFile := filepath.Join(dir, "flag.key")
	k, err := kernel.GenerateKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err = Resolve(context.Background(), Flags{Policy: "/p.yaml", KeyFile: keyFile}, d, env(e))
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.SigningKey()
	if err != nil || !got.Equal(k) {
		t.Fatalf("--key with %s set loaded another key (%v)", EnvSigningKey, err)
	}
	for _, tc := range []struct {
		f    Flags
		e    map[string]string
		want string
	}{
		{Flags{KeyFile: "/k"}, nil, "no policy"},
		{Flags{Policy: "/p"}, nil, "no signing key"},
		{Flags{Policy: "/p", KeyFile: "/k", LogLevel: "loud"}, nil, "log level"},
		{Flags{Policy: "/p", KeyFile: "/k", ReceiptMode: "later"}, nil, "receipt mode"},
		{Flags{Policy: "/p"}, map[string]string{EnvSigningKey: "xyz"}, EnvSigningKey},
		{Flags{Policy: "ftp://b/p", KeyFile: "/k"}, nil, `"ftp"`},
		{Flags{Policy: "azblob://account/container", KeyFile: "/k"}, nil, "ACCOUNT/CONTAINER/BLOB"},
		{Flags{Policy: "s3://b/p", KeyFile: "/k"}, map[string]string{EnvPolicyWatchInterval: "-1s"}, EnvPolicyWatchInterval},
	} {
		if _, err := Resolve(context.Background(), tc.f, d, env(tc.e)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v %v: err %v, want %q", tc.f, tc.e, err, tc.want)
		}
	}
}

// TestLoadNamesKeysNotGoTypes: a mistyped key was reported as "field polcy
// not found in type config.Config", a wrong value as "cannot unmarshal !!str
// into uint16": the file's path, line and key, and the key meant, instead.
func TestLoadNamesKeysNotGoTypes(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ yaml, want string }{
		{"version: 1\n\npolcy: /p.yaml\n", `kernel.yaml:3: unknown key "polcy" (did you mean "policy"?)`},
		{"agent:\n  workloads:\n    - name: a\n      cgroup: b\n      egres: {allow_ports: [443]}\n", `kernel.yaml:5: agent.workloads[0]: unknown key "egres" (did you mean "egress"?)`},
		{"agent:\n  listen_port: http\n", `kernel.yaml:2: agent.listen_port: a string "http" is not a non-negative whole number`},
		{"receipts:\n  checkpoint_every: [1]\n", `kernel.yaml:2: receipts.checkpoint_every: a list is not a whole number`},
		{"agent:\n  timeouts: {idle: forever}\n", `kernel.yaml:2: agent.timeouts.idle: invalid duration "forever"`},
	} {
		path := filepath.Join(dir, "kernel.yaml")
		os.WriteFile(path, []byte(tc.yaml), 0o600)
		_, err := Load(path, env(nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v\nwant it to contain %q", tc.yaml, err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), "config.") || strings.Contains(err.Error(), "not found in type")) {
			t.Errorf("%q: error names a Go type: %v", tc.yaml, err)
		}
		var pe *ParseError
		if _, perr := Parse([]byte(tc.yaml), env(nil)); !errors.As(perr, &pe) {
			t.Errorf("%q: Parse error %v is no ParseError", tc.yaml, perr)
		}
	}
}

package config

import (
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/policysource"
	"github.com/backbay-labs/chio-agent/receipts/sink"
)

const seedHex = "0101010101010101010101010101010101010101010101010101010101010101"

func TestParseSidecarSection(t *testing.T) {
	c, err := Parse([]byte(`
policy: /etc/chio/policy.yaml
sidecar:
  listen: ${LISTEN:-0.0.0.0:9090}
  upstream: http://127.0.0.1:8080/api
  spec: /etc/chio/openapi.yaml
  health_path: /healthz
  tool_server: petstore
  max_body_bytes: 2048
  capability_authority_url: https://auth.example.test
  timeouts: {read_header: 2s, upstream_header: 30s}
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	sc := c.Sidecar
	if sc.Listen != "0.0.0.0:9090" || sc.Upstream != "http://127.0.0.1:8080/api" || sc.MaxBodyBytes != 2048 || sc.ToolServer != "petstore" {
		t.Fatalf("sidecar %+v", sc)
	}
	rt := sc.Timeouts.withDefaults()
	if rt.ReadHeader != 2*time.Second || rt.UpstreamHeader != 30*time.Second || rt.Idle != 2*time.Minute {
		t.Fatalf("timeouts %+v", rt)
	}
}

func TestParseSidecarRejects(t *testing.T) {
	parseRejects(t, []parseReject{
		{"unknown key", "sidecar: {upstreem: http://x}\n", `line 1: sidecar: unknown key "upstreem" (did you mean "upstream"?)`},
		{"bad listen", "sidecar: {listen: nine-oh-nine-oh}\n", "sidecar.listen"},
		{"bad upstream scheme", "sidecar: {upstream: ftp://x}\n", "http or https"},
		{"upstream credentials", "sidecar: {upstream: 'http://u:pw@x'}\n", "credentials"},
		{"upstream query", "sidecar: {upstream: 'http://x/?a=1'}\n", "query"},
		{"health path", "sidecar: {health_path: healthz}\n", "sidecar.health_path"},
		{"negative body", "sidecar: {max_body_bytes: -1}\n", "max_body_bytes"},
		{"authority", "sidecar: {capability_authority_url: 'auth.example'}\n", "capability_authority_url"},
		{"timeout", "sidecar: {timeouts: {idle: forever}}\n", "invalid duration"},
	})
}

func TestResolveSidecarPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "kernel.yaml")
	os.WriteFile(cfg, []byte(`
policy: /file/policy.yaml
receipts: {sink: /file/receipts.db, mode: async}
signing_key: /file/key
log_level: warn
trusted_issuer_keys: ["`+strings.Repeat("ab", 32)+`"]
sidecar:
  listen: 127.0.0.1:7000
  upstream: http://127.0.0.1:8080
  spec: file:///file/openapi.yaml
  health_path: /file-health
`), 0o600)
	// File only.
	s, err := ResolveSidecar(SidecarFlags{}, env(map[string]string{EnvKernelConfigPath: cfg}))
	if err != nil {
		t.Fatal(err)
	}
	if s.PolicySource != "/file/policy.yaml" || s.ReceiptPath != "/file/receipts.db" || s.ReceiptMode != "async" || s.KeyFile != "/file/key" ||
		s.Listen != "127.0.0.1:7000" || s.Spec != "/file/openapi.yaml" || s.HealthPath != "/file-health" || s.LogLevel != "warn" ||
		len(s.TrustedIssuerKeys) != 1 || s.MaxBodyBytes != DefaultMaxBodyBytes || s.ControlToken != "" {
		t.Fatalf("from the file: %+v", s)
	}
	// Environment over the file.
	e := map[string]string{
		EnvKernelConfigPath: cfg, EnvPolicySource: "/env/policy.yaml", EnvReceiptSink: "file:///env/r.db",
		EnvListenAddr: "0.0.0.0:9090", EnvHealthPath: "/env-health", EnvLogLevel: "debug", EnvSigningKey: seedHex,
		EnvTrustedIssuerKeys:   strings.Repeat("cd", 32) + "," + strings.Repeat("ef", 32),
		EnvSidecarControlToken: "a-control-token-of-some-length", EnvCapabilityAuthorityURL: "https://auth.example.test",
	}
	s, err = ResolveSidecar(SidecarFlags{}, env(e))
	if err != nil {
		t.Fatal(err)
	}
	if s.PolicySource != "/env/policy.yaml" || s.ReceiptPath != "/env/r.db" || s.Listen != "0.0.0.0:9090" || s.HealthPath != "/env-health" ||
		s.LogLevel != "debug" || s.KeySeed != seedHex || len(s.TrustedIssuerKeys) != 2 || s.ControlToken == "" || s.CapabilityAuthorityURL == "" {
		t.Fatalf("from the environment: %+v", s)
	}
	// Flags over both.
	s, err = ResolveSidecar(SidecarFlags{Policy: "/flag/p.yaml", Receipts: "/flag/r.db", Listen: "127.0.0.1:1", HealthPath: "/flag-health",
		LogLevel: "error", KeyFile: "/flag/key", Upstream: "https://api.example.test", Spec: "/flag/spec.json", MaxBodyBytes: 5, ReceiptMode: "sync"}, env(e))
	if err != nil {
		t.Fatal(err)
	}
	if s.PolicySource != "/flag/p.yaml" || s.ReceiptPath != "/flag/r.db" || s.Listen != "127.0.0.1:1" || s.HealthPath != "/flag-health" ||
		s.LogLevel != "error" || s.KeyFile != "/flag/key" || !s.KeyFromFlag || s.Upstream != "https://api.example.test" ||
		s.Spec != "/flag/spec.json" || s.MaxBodyBytes != 5 || s.ReceiptMode != "sync" {
		t.Fatalf("from flags: %+v", s)
	}
}

func TestResolveSidecarRefuses(t *testing.T) {
	base := func() (SidecarFlags, map[string]string) {
		return SidecarFlags{Upstream: "http://127.0.0.1:8080", Spec: "/s.yaml", Policy: "/p.yaml"}, map[string]string{EnvSigningKey: seedHex}
	}
	for _, tc := range []struct {
		name   string
		mutate func(*SidecarFlags, map[string]string)
		want   string
		is     error
	}{
		{"no policy", func(f *SidecarFlags, _ map[string]string) { f.Policy = "" }, "no policy", nil},
		{"ftp policy", func(f *SidecarFlags, _ map[string]string) { f.Policy = "ftp://b/p.yaml" }, `"ftp"`, ErrUnsupportedScheme},
		{"gs policy above its bucket", func(f *SidecarFlags, _ map[string]string) { f.Policy = "gs://b/../p.yaml" }, "not a clean relative path", policysource.ErrBadSource},
		{"s3 policy from env with a bad pin", func(f *SidecarFlags, e map[string]string) {
			f.Policy = ""
			e[EnvPolicySource] = "s3://b/p.yaml#sha256:00"
		}, "pin", policysource.ErrBadSource},
		{"bad watch interval", func(_ *SidecarFlags, e map[string]string) { e[EnvPolicyWatchInterval] = "soon" }, EnvPolicyWatchInterval, nil},
		{"bigquery sink", func(_ *SidecarFlags, e map[string]string) { e[EnvReceiptSink] = "bigquery://proj/ds" }, "gs://BUCKET/PREFIX", sink.ErrBigQuery},
		{"dynamodb sink with a path", func(f *SidecarFlags, _ map[string]string) { f.Receipts = "dynamodb://table/x" }, "want dynamodb://TABLE", nil},
		{"ftp sink", func(f *SidecarFlags, _ map[string]string) { f.Receipts = "ftp://h/r.db" }, `"ftp"`, ErrUnsupportedScheme},
		{"http spec", func(f *SidecarFlags, _ map[string]string) { f.Spec = "https://x/spec.yaml" }, "spec", ErrUnsupportedScheme},
		{"no upstream", func(f *SidecarFlags, _ map[string]string) { f.Upstream = "" }, "no upstream", nil},
		{"bad upstream", func(f *SidecarFlags, _ map[string]string) { f.Upstream = "127.0.0.1:8080" }, "upstream", nil},
		{"no spec", func(f *SidecarFlags, _ map[string]string) { f.Spec = "" }, "no OpenAPI spec", nil},
		{"no key", func(_ *SidecarFlags, e map[string]string) { delete(e, EnvSigningKey) }, "no signing key", nil},
		{"bad key", func(_ *SidecarFlags, e map[string]string) { e[EnvSigningKey] = "xyz" }, EnvSigningKey, nil},
		{"bad issuer key", func(_ *SidecarFlags, e map[string]string) { e[EnvTrustedIssuerKey] = "nothex" }, EnvTrustedIssuerKey, nil},
		{"short token", func(_ *SidecarFlags, e map[string]string) { e[EnvSidecarControlToken] = "short" }, "at least 16", nil},
		{"bad listen", func(_ *SidecarFlags, e map[string]string) { e[EnvListenAddr] = "9090" }, "host:port", nil},
		{"bad port", func(f *SidecarFlags, _ map[string]string) { f.Listen = "127.0.0.1:http" }, "not a number", nil},
		{"bad health path", func(_ *SidecarFlags, e map[string]string) { e[EnvHealthPath] = "health" }, "health path", nil},
		{"bad authority", func(_ *SidecarFlags, e map[string]string) { e[EnvCapabilityAuthorityURL] = "ftp://a" }, EnvCapabilityAuthorityURL, nil},
		{"bad receipt mode", func(f *SidecarFlags, _ map[string]string) { f.ReceiptMode = "later" }, "receipt mode", nil},
		{"missing kernel.yaml", func(_ *SidecarFlags, e map[string]string) { e[EnvKernelConfigPath] = "/nonexistent/kernel.yaml" }, "kernel.yaml", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, e := base()
			tc.mutate(&f, e)
			_, err := ResolveSidecar(f, env(e))
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("err = %v; want it to mention %q (is %v)", err, tc.want, tc.is)
			}
		})
	}
}

func TestEnvContractLists(t *testing.T) {
	want := "CHIO_LISTEN_ADDR CHIO_HEALTH_PATH CHIO_KERNEL_CONFIG_PATH CHIO_POLICY_SOURCE CHIO_POLICY_WATCH_INTERVAL CHIO_RECEIPT_SINK CHIO_SIGNING_KEY CHIO_CAPABILITY_AUTHORITY_URL CHIO_LOG_LEVEL CHIO_TRUSTED_ISSUER_KEY CHIO_TRUSTED_ISSUER_KEYS CHIO_SIDECAR_CONTROL_TOKEN CHIO_SESSION_HEADER CHIO_SESSION_JOURNAL CHIO_SESSION_MAX_CALLS CHIO_SESSION_MAX_CALLS_PER_TOOL CHIO_SESSION_MAX_REQUEST_BYTES CHIO_SESSION_MAX_RESPONSE_BYTES CHIO_SESSION_IDLE_EXPIRY CHIO_SESSION_PEERS CHIO_SESSION_SELF CHIO_SESSION_PEER_TOKEN CHIO_SESSION_REDIRECT CHIO_SESSION_PEERS_DNS CHIO_SESSION_PEERS_REFRESH CHIO_SESSION_PEERS_RESOLVER CHIO_SESSION_PEER_PROBE CHIO_SESSION_TAKEOVER CHIO_SESSION_DRAIN_TIMEOUT"
	if got := strings.Join(SidecarEnv, " "); got != want {
		t.Fatalf("SidecarEnv = %s\nwant        %s", got, want)
	}
	for _, n := range NodeAgentEnv {
		if !strings.Contains(want, n) {
			t.Fatalf("node agent variable %s is not in the contract", n)
		}
	}
	if _, err := hex.DecodeString(seedHex); err != nil {
		t.Fatal(err)
	}
}

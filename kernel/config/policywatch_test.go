package config

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestEnvContractDocumented: docs/sidecar.md's environment table lists
// exactly the variables of the contract, and says which schemes a policy
// source takes and where each store's credentials come from.
func TestEnvContractDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "sidecar.md"))
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	// A row's first cell names one variable or several (`A`, `B`).
	name := regexp.MustCompile("`(CHIO_[A-Z_]+)`")
	for _, m := range regexp.MustCompile("(?m)^\\| (`CHIO_[A-Z_]+`(?:, `CHIO_[A-Z_]+`)*) \\|").FindAllStringSubmatch(string(doc), -1) {
		for _, n := range name.FindAllStringSubmatch(m[1], -1) {
			rows = append(rows, n[1])
		}
	}
	if !slices.Equal(rows, SidecarEnv) {
		t.Errorf("docs/sidecar.md's environment table lists %v; the contract (SidecarEnv) is %v", rows, SidecarEnv)
	}
	var policyRow string
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "| `"+EnvPolicySource+"`") {
			policyRow = line
		}
	}
	for _, want := range []string{"s3://", "gs://", "azblob://", "#sha256:", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST", "AZURE_STORAGE_CONNECTION_STRING"} {
		if !strings.Contains(policyRow, want) {
			t.Errorf("docs/sidecar.md's %s row does not mention %s", EnvPolicySource, want)
		}
	}
}

// TestPolicyWatchIntervalKey: kernel.yaml's policy_watch_interval is read,
// documented in docs/kernel-yaml.md, and the variable beats it.
func TestPolicyWatchIntervalKey(t *testing.T) {
	c, err := Parse([]byte("policy: s3://b/p.yaml\npolicy_watch_interval: 45s\nsigning_key: /k\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.PolicyWatchInterval.D(0).String() != "45s" {
		t.Fatalf("policy_watch_interval = %v", c.PolicyWatchInterval.D(0))
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "kernel.yaml")
	os.WriteFile(p, []byte("policy: s3://b/p.yaml\npolicy_watch_interval: 45s\nsigning_key: /k\n"), 0o600)
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{nil, "45s"},
		{map[string]string{EnvPolicyWatchInterval: "5s"}, "5s"},
	} {
		cm, err := Resolve(t.Context(), Flags{Config: p}, Defaults{Receipts: filepath.Join(dir, "r.db")}, env(tc.env))
		if err != nil {
			t.Fatal(err)
		}
		w, err := cm.OpenPolicy()
		if err != nil {
			t.Fatal(err)
		}
		if !w.Polled() || w.Interval().String() != tc.want {
			t.Errorf("env %v: polled %v every %v; want every %s", tc.env, w.Polled(), w.Interval(), tc.want)
		}
	}
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "kernel-yaml.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), "| `policy_watch_interval` |") {
		t.Error("docs/kernel-yaml.md does not document policy_watch_interval")
	}
}

package config

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// TestKubernetesLoadPolicies: every policy of the section is loaded by its
// own source; a missing or invalid file is an error naming the policy's name
// and path (the agent refuses to start on it), and the policies that did
// load are still returned (a reload keeps the old one only for the name that
// failed).
func TestKubernetesLoadPolicies(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	missing := filepath.Join(dir, "missing.yaml")
	os.WriteFile(good, []byte("hushspec: \"0.1.0\"\nname: good\nrules:\n  egress:\n    allow: [a.test]\n    default: block\n"), 0o644)
	os.WriteFile(bad, []byte("hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [a.test]\n    defaut: block\n"), 0o644)
	load := func(ctx context.Context, src string) (*hushspec.Policy, error) { return LoadPolicy(ctx, src, "") }

	k := &Kubernetes{Policies: map[string]string{"default": good, "research": "file://" + good}, DefaultPolicy: "default"}
	pols, err := k.LoadPolicies(context.Background(), load)
	if err != nil || len(pols) != 2 || pols["default"].Name() != "good" || pols["research"].Hash() != pols["default"].Hash() {
		t.Fatalf("LoadPolicies: %v, %v", pols, err)
	}

	k.Policies = map[string]string{"default": good, "research": bad, "lab": missing}
	pols, err = k.LoadPolicies(context.Background(), load)
	if err == nil {
		t.Fatal("an invalid and a missing policy file loaded without error")
	}
	for _, want := range []string{"kubernetes.policies.research from " + bad, "kubernetes.policies.lab from " + missing} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if len(pols) != 1 || pols["default"] == nil {
		t.Errorf("the policy that loaded is not returned: %v", pols)
	}

	// A reload loads only the names asked for, each with its own outcome.
	res := k.LoadEach(context.Background(), load, []string{"research", "default"})
	if len(res) != 2 || res["default"].Policy == nil || res["default"].Err != nil ||
		res["research"].Policy != nil || !strings.Contains(fmt.Sprint(res["research"].Err), bad) {
		t.Errorf("LoadEach: %+v", res)
	}
}

func TestPolicyFile(t *testing.T) {
	for src, want := range map[string]string{
		"/etc/chio/p.yaml":         "/etc/chio/p.yaml",
		"file:///etc/chio/p.yaml":  "/etc/chio/p.yaml",
		"https://policies.test/p":  "",
		"http://policies.test/p":   "",
		"relative/p.yaml":          "relative/p.yaml",
		"file://localhost/etc/p.y": "/etc/p.y",
	} {
		if got := PolicyFile(src); got != want {
			t.Errorf("PolicyFile(%q) = %q, want %q", src, got, want)
		}
	}
}

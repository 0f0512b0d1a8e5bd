package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunRefusesABadPodPolicy: a kubernetes.policies entry whose file is
// missing, or does not parse, stops `run` before anything is attached, with
// an error naming the policy and its path (fail closed: its pods are never
// decided by another policy).
func TestRunRefusesABadPodPolicy(t *testing.T) {
	bin, dir, pinDir, keyPath := daemonTest(t)
	good := filepath.Join(dir, "policy.yaml")
	bad := filepath.Join(dir, "research.yaml")
	missing := filepath.Join(dir, "lab.yaml")
	os.WriteFile(good, []byte("hushspec: \"0.1.0\"\nname: pods\nrules:\n  egress:\n    allow: [a.test]\n    default: block\n"), 0o644)
	os.WriteFile(bad, []byte("hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [\"*\"]\n    defualt: allow\n"), 0o644)
	for name, src := range map[string]string{"research": bad, "lab": missing} {
		t.Run(name, func(t *testing.T) {
			cfg := filepath.Join(dir, name+".kernel.yaml")
			kcfg := agentYAML(good, keyPath, filepath.Join(dir, name+".db"), pinDir, filepath.Join(dir, name+".sock")) + fmt.Sprintf(`kubernetes:
  cri_socket: /nonexistent/cri.sock
  policies: {default: %s, %s: %s}
  default_policy: default
`, good, name, src)
			if err := os.WriteFile(cfg, []byte(kcfg), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "run", "--config", cfg).CombinedOutput()
			if err == nil {
				t.Fatalf("run started with a bad pod policy:\n%s", out)
			}
			if want := fmt.Sprintf("kubernetes.policies.%s from %s", name, src); !strings.Contains(string(out), want) {
				t.Fatalf("run's error does not name %q:\n%s", want, out)
			}
			if links, _ := filepath.Glob(filepath.Join(pinDir, "layout-*", "links")); len(links) > 0 {
				t.Errorf("run attached programs before refusing the policy")
			}
		})
	}
}

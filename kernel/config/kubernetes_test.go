package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseKubernetesSection(t *testing.T) {
	c, err := Parse([]byte(`
kubernetes:
  cri_socket: unix:///run/containerd/containerd.sock
  cgroup_root: auto
  policies: {default: /etc/chio/policy.yaml, research: /etc/chio/research.yaml}
  default_policy: default
  exempt_namespaces: [kube-system, chio-system]
  poll_interval: 500ms
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	k := c.Kubernetes
	if k == nil || k.DefaultPolicy != "default" || k.Policies["research"] != "/etc/chio/research.yaml" ||
		len(k.ExemptNamespaces) != 2 || time.Duration(k.PollInterval) != 500*time.Millisecond {
		t.Fatalf("kubernetes section read wrong: %+v", k)
	}
	c, err = Parse([]byte("version: 1\n"), env(nil))
	if err != nil || c.Kubernetes != nil {
		t.Fatalf("no kubernetes section must leave discovery off: %+v, %v", c, err)
	}
}

// TestKubernetesSectionRefusesBadValues: every mistake that would leave pods
// unprotected, or protected by a policy nobody meant, stops the start.
func TestKubernetesSectionRefusesBadValues(t *testing.T) {
	base := "  policies: {default: /p.yaml}\n  default_policy: default\n"
	for _, tc := range []struct{ name, body, want string }{
		{"unknown key", base + "  exempt_namespace: [kube-system]\n", `unknown key "exempt_namespace" (did you mean "exempt_namespaces"?)`},
		{"not a mapping", "  - a\n", "must be a mapping"},
		{"no policies", "  default_policy: none\n", "at least one policy"},
		{"default missing", "  policies: {default: /p.yaml}\n", "default_policy: required"},
		{"default unknown", "  policies: {a: /p.yaml}\n  default_policy: b\n", `"b" is not in kubernetes.policies`},
		// Named by its own key, not by the first key of the section's line.
		{"default unknown after another key", "  cgroup_root: auto\n  policies: {a: /p.yaml}\n  default_policy: b\n", `line 2: kubernetes.default_policy: "b" is not`},
		{"none as a name", "  policies: {none: /p.yaml}\n  default_policy: none\n", "reserved"},
		{"name not a label value", "  policies: {\"a b\": /p.yaml}\n  default_policy: none\n", "not a valid label value"},
		{"name too long", "  policies: {" + strings.Repeat("a", 64) + ": /p.yaml}\n  default_policy: none\n", "not a valid label value"},
		{"empty source", "  policies: {a: \"\"}\n  default_policy: a\n", "empty source"},
		{"bad namespace", base + "  exempt_namespaces: [Kube_System]\n", "not a namespace name"},
		{"namespace twice", base + "  exempt_namespaces: [a, a]\n", "listed twice"},
		{"relative socket", base + "  cri_socket: run/containerd.sock\n", "not an absolute path"},
		{"root escapes", base + "  cgroup_root: kubepods/../../etc\n", "has a .. component"},
		{"poll too fast", base + "  poll_interval: 1ms\n", "below 100ms"},
		{"wrong type", base + "  exempt_namespaces: kube-system\n", "is not a list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte("kubernetes:\n"+tc.body), env(nil))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestKubernetesAcceptsNoneDefault(t *testing.T) {
	c, err := Parse([]byte("kubernetes:\n  policies: {research-v1.2: /r.yaml}\n  default_policy: none\n  cgroup_root: /sys/fs/cgroup/kubepods.slice\n"), env(nil))
	if err != nil || c.Kubernetes.DefaultPolicy != NoPolicy {
		t.Fatalf("default_policy none refused: %v", err)
	}
}

func FuzzKubernetesSection(f *testing.F) {
	f.Add("  policies: {default: /p.yaml}\n  default_policy: default\n")
	f.Add("  policies: {a: /p}\n  default_policy: none\n  exempt_namespaces: [x]\n")
	f.Fuzz(func(t *testing.T, body string) {
		c, err := Parse([]byte("kubernetes:\n"+body), env(nil))
		if err != nil || c.Kubernetes == nil {
			return
		}
		if err := c.Kubernetes.Validate(); err != nil {
			t.Fatalf("parsed section fails its own validation: %v", err)
		}
	})
}

// TestDeployKernelYAMLKubernetesExample keeps the commented kubernetes:
// block of deploy/kernel.yaml valid: uncommented, it parses.
func TestDeployKernelYAMLKubernetesExample(t *testing.T) {
	b, err := os.ReadFile("../../deploy/kernel.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	for _, line := range strings.Split(string(b), "\n") {
		if line == "# kubernetes:" || len(block) > 0 && strings.HasPrefix(line, "#   ") {
			block = append(block, strings.TrimPrefix(line, "# "))
		} else if len(block) > 0 {
			break
		}
	}
	if len(block) < 3 {
		t.Fatal("deploy/kernel.yaml has no commented kubernetes: block")
	}
	c, err := Parse([]byte(strings.Join(block, "\n")), env(nil))
	if err != nil || c.Kubernetes == nil || c.Kubernetes.DefaultPolicy == "" {
		t.Fatalf("the example does not parse: %v", err)
	}
}

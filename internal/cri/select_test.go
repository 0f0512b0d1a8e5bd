package cri

import (
	"testing"

	"github.com/backbay-labs/chio-agent/kernel/config"
)

func TestSelectPolicyByLabel(t *testing.T) {
	k := &config.Kubernetes{
		Policies:         map[string]string{"default": "/d.yaml", "research": "/r.yaml"},
		DefaultPolicy:    "default",
		ExemptNamespaces: []string{"kube-system", "chio-system"},
	}
	none := *k
	none.DefaultPolicy = config.NoPolicy
	pod := func(ns string, labels map[string]string) Pod {
		return Pod{Namespace: ns, Name: "p", UID: "u-" + ns, Labels: labels}
	}
	lbl := func(v string) map[string]string { return map[string]string{config.PolicyLabel: v} }
	for _, tc := range []struct {
		name string
		k    *config.Kubernetes
		pod  Pod
		want Selection
	}{
		{"labelled", k, pod("team", lbl("research")), Selection{Protect: true, Policy: "research"}},
		{"unlabelled gets default", k, pod("team", nil), Selection{Protect: true, Policy: "default"}},
		{"exempt namespace", k, pod("kube-system", nil), Selection{}},
		{"label wins in an exempt namespace", k, pod("kube-system", lbl("research")), Selection{Protect: true, Policy: "research"}},
		{"unknown label refuses", k, pod("team", lbl("typo")), Selection{Protect: true, RefuseAll: true}},
		{"label none is no way out", k, pod("team", lbl("none")), Selection{Protect: true, RefuseAll: true}},
		{"empty label refuses", k, pod("team", lbl("")), Selection{Protect: true, RefuseAll: true}},
		{"unknown label in exempt namespace refuses", k, pod("kube-system", lbl("typo")), Selection{Protect: true, RefuseAll: true}},
		{"default none leaves unlabelled", &none, pod("team", nil), Selection{}},
		{"default none still protects labelled", &none, pod("team", lbl("default")), Selection{Protect: true, Policy: "default"}},
		{"the agent's own pod", k, Pod{Namespace: "chio-system", UID: "self", Labels: lbl("research")}, Selection{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Select(tc.k, tc.pod, "self")
			if got.Reason == "" {
				t.Errorf("no reason given")
			}
			got.Reason = ""
			if got != tc.want {
				t.Errorf("Select = %+v, want %+v", got, tc.want)
			}
		})
	}
}

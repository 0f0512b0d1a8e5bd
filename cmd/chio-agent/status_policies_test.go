package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/agent"
)

// TestStatusShowsPodPolicies: status lists kubernetes.policies (which is the
// default, the hash in force, how many pods each decides, a refused reload)
// and each pod's policy with its hash; --pod shows the pod's full hash.
func TestStatusShowsPodPolicies(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	hd, hr := strings.Repeat("d", 64), strings.Repeat("e", 64)
	s := agent.Status{
		PodPolicies: []agent.PodPolicyStatus{
			{Name: "default", Hash: hd, Source: "/etc/chio/default.yaml", Default: true, Pods: 1, LoadedAt: since},
			{Name: "research", Hash: hr, Source: "/etc/chio/research.yaml", Pods: 1, LoadedAt: since,
				ReloadError: "reload kubernetes.policies.research from /etc/chio/research.yaml: bad yaml"},
		},
		Pods: []agent.PodStatus{
			{Namespace: "team-a", Name: "web", State: "protected", Policy: "default", PolicyHash: hd, Reason: "default_policy", Since: since},
			{Namespace: "team-r", Name: "lab", State: "protected", Policy: "research", PolicyHash: hr, Reason: "label chio.dev/policy=research", Since: since},
		},
	}
	var out bytes.Buffer
	printStatus(&out, s)
	for _, want := range []string{"default (default)", "research", short(hd), short(hr), "/etc/chio/research.yaml: bad yaml", "POD POLICY", "HASH"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := showPod(&out, s, "team-r/lab", false); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "research") || !strings.Contains(got, hr) {
		t.Errorf("status --pod team-r/lab:\n%s", got)
	}
}

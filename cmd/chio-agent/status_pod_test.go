package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/agent"
)

// TestStatusShowsPods: status lists the discovered pods, and --pod shows one
// with why it has its policy; a name with no pod, or not NS/NAME, is an
// error.
func TestStatusShowsPods(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := agent.Status{Pods: []agent.PodStatus{
		{Namespace: "team-a", Name: "web", UID: "u1", State: "protected", Policy: "default", Reason: "default_policy",
			Since: since, Workload: "team-a/web", Containers: []string{"main"}, Netns: "/var/run/netns/cni-1"},
		{Namespace: "team-b", Name: "typo", UID: "u2", State: "protected", RefuseAll: true,
			Reason: `label chio.dev/policy="nosuch" names no policy in kernel.yaml: every connection refused`, Since: since},
		{Namespace: "kube-system", Name: "dns", UID: "u3", State: "exempt", Reason: "namespace kube-system is exempt", Since: since},
	}}
	var out bytes.Buffer
	printStatus(&out, s)
	for _, want := range []string{"team-a/web", "default", "team-b/typo", "refuse-all", "kube-system/dns", "exempt", "2026-01-02 03:04:05"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := showPod(&out, s, "team-b/typo", false); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "refuse-all") || !strings.Contains(got, "nosuch") || strings.Contains(got, "team-a") {
		t.Errorf("status --pod team-b/typo:\n%s", got)
	}
	for _, bad := range []string{"team-a/nope", "nonamespace", "/x"} {
		if err := showPod(&out, s, bad, false); err == nil {
			t.Errorf("status --pod %q: no error", bad)
		}
	}
}

package cri

import (
	"errors"
	"testing"
)

func TestParseVerboseSpec(t *testing.T) {
	f, err := parseVerbose(map[string]string{"info": `{"pid":42,"runtimeSpec":{"linux":{"cgroupsPath":"/kubepods/besteffort/podx/abc",` +
		`"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"}]}}}`})
	if err != nil || f.PID != 42 || f.CgroupsPath != "/kubepods/besteffort/podx/abc" || f.Netns != "/var/run/netns/cni-1" || !f.HasNetNS {
		t.Fatalf("parseVerbose = %+v, %v", f, err)
	}
	for _, bad := range []map[string]string{nil, {"info": "{"}, {"info": `{"pid":1}`}, {"info": `{"runtimeSpec":{}}`}} {
		if _, err := parseVerbose(bad); err == nil {
			t.Errorf("parseVerbose(%v) accepted", bad)
		}
	}
	if _, err := parseVerbose(map[string]string{"info": `{"runtimeSpec":{}}`}); !errors.Is(err, ErrNoSpec) {
		t.Errorf("no spec: %v, want ErrNoSpec", err)
	}
}

func TestDiffPods(t *testing.T) {
	a := Pod{SandboxID: "a", Ready: true, Containers: []Container{{ID: "c1", State: "running"}}}
	b := Pod{SandboxID: "b", Ready: true}
	first := diff(nil, map[string]Pod{"a": a})
	if len(first) != 1 || first[0].Kind != PodAdded {
		t.Fatalf("first sync: %+v", first)
	}
	if got := diff(map[string]Pod{"a": a}, map[string]Pod{"a": a}); len(got) != 0 {
		t.Fatalf("no change reported %+v", got)
	}
	a2 := a
	a2.Containers = []Container{{ID: "c1", State: "exited"}}
	got := diff(map[string]Pod{"a": a}, map[string]Pod{"a": a2, "b": b})
	kinds := map[string]ChangeKind{}
	for _, c := range got {
		kinds[c.Pod.SandboxID] = c.Kind
	}
	if kinds["a"] != PodUpdated || kinds["b"] != PodAdded || len(got) != 2 {
		t.Fatalf("diff = %+v", got)
	}
	got = diff(map[string]Pod{"a": a, "b": b}, map[string]Pod{"b": b})
	if len(got) != 1 || got[0].Kind != PodRemoved || got[0].Pod.SandboxID != "a" {
		t.Fatalf("removal: %+v", got)
	}
	withErr := a
	withErr.Err = errors.New("no spec")
	if samePod(a, withErr) {
		t.Fatal("a pod whose status turned incomplete must count as changed")
	}
}

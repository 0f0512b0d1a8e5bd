package agent

import (
	"strings"
	"testing"
)

// TestOwnCgroupRefusesAHiddenCgroup: an agent in a pod whose cgroup a cgroup
// namespace hides cannot exempt itself, and says so instead of starting with
// its own sockets refused by the birth root.
func TestOwnCgroupRefusesAHiddenCgroup(t *testing.T) {
	for _, tc := range []struct {
		name, proc, pod, want, err string
	}{
		{"host cgroup", "0::/kubepods/burstable/podabc/123\n", "abc", "kubepods/burstable/podabc/123", ""},
		{"systemd service in root", "0::/\n", "", "", ""},
		{"pod in a cgroup namespace", "0::/\n", "abc", "", "cgroup namespace hides"},
		{"hybrid", "12:pids:/x\n0::/system.slice/chio.service\n", "", "system.slice/chio.service", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ownCgroup(strings.NewReader(tc.proc), tc.pod)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ownCgroup = %q, %v; want an error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ownCgroup = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

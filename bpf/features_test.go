package bpf

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// An old kernel must be refused with the name of what it lacks: the probe
// that says no is the one the error names, and the error is ErrNotSupported.
func TestFeatureCheckNamesTheMissingFeature(t *testing.T) {
	var ran []string
	probe := func(name string, err error) featureProbe {
		return featureProbe{name, func() error { ran = append(ran, name); return err }}
	}
	err := checkFeatures([]featureProbe{
		probe("BTF", nil),
		probe("helper bpf_get_netns_cookie in SockOps programs", ebpf.ErrNotSupported),
		probe("RingBuf maps", ebpf.ErrNotSupported),
	})
	if !errors.Is(err, ErrNotSupported) {
		t.Fatalf("err = %v, want ErrNotSupported", err)
	}
	if !strings.Contains(err.Error(), "helper bpf_get_netns_cookie in SockOps programs") || strings.Contains(err.Error(), "RingBuf") {
		t.Fatalf("err = %q, want it to name the netns cookie helper only", err)
	}
	if len(ran) != 2 {
		t.Fatalf("probes run = %v, want the check to stop at the first missing feature", ran)
	}

	// A probe that cannot tell is not reported as a missing feature.
	err = checkFeatures([]featureProbe{probe("RingBuf maps", errors.New("permission denied"))})
	if err == nil || errors.Is(err, ErrNotSupported) {
		t.Fatalf("err = %v, want a probe failure that is not ErrNotSupported", err)
	}
	if err := checkFeatures([]featureProbe{probe("BTF", nil)}); err != nil {
		t.Fatalf("all present: %v", err)
	}
}

// The probe list is read from the object, so it names what the README
// promises is checked: the ring buffer, the sock_release and sock_create
// hooks, the syscall program type, bpf_get_netns_cookie in sockops, and the
// guard walk's CO-RE reads.
func TestFeatureProbesCoverWhatTheProgramsUse(t *testing.T) {
	spec, err := loadChio()
	if err != nil {
		t.Fatalf("load spec: %v", err)
	}
	var names []string
	for _, p := range featureProbes(spec) {
		names = append(names, p.name)
	}
	all := strings.Join(names, "\n")
	for _, want := range []string{
		"BTF",
		"guard walk reads (CO-RE)",
		"RingBuf maps",
		"LPMTrie maps",
		"the cgroup/sock_release attach point",
		"the cgroup/sock_create attach point",
		"the cgroup/connect6 attach point",
		"Syscall programs",
		"helper bpf_get_netns_cookie in SockOps programs",
		"helper bpf_ringbuf_reserve in CGroupSockAddr programs",
		"helper bpf_get_current_ancestor_cgroup_id in CGroupSockAddr programs",
		"helper bpf_spin_lock in CGroupSock programs",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no probe for %q in:\n%s", want, all)
		}
	}
}

// On this machine (the project's kernels have everything) every probe says yes.
func TestFeatureProbesPassHere(t *testing.T) {
	testutil.RequireRoot(t)
	spec, err := loadChio()
	if err != nil {
		t.Fatalf("load spec: %v", err)
	}
	if err := checkFeatures(featureProbes(spec)); err != nil {
		if errors.Is(err, ErrNotSupported) {
			testutil.Skip(t, err.Error())
		}
		t.Fatal(err)
	}
}

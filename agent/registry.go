package agent

import (
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/kernel"
)

func newWorkload(id uint32, spec WorkloadSpec, lp *listenerPair) *workload {
	return &workload{id: id, name: spec.Name, cgroup: spec.Cgroup,
		netns: spec.Netns, labels: spec.Labels, exempt: spec.Exempt, listen: lp,
		ident:       workloadIdentity(spec.Name, spec.Cgroup, spec.Labels),
		egressPorts: slices.Clone(spec.EgressPorts), inbound: inboundRules(spec),
		refuseAll: spec.RefuseAll, pod: spec.Pod, byContainer: containerIdentities(spec), kern: spec.kern}
}

// workload is a protected workload as the proxy knows it.
type workload struct {
	id     uint32
	name   string
	cgroup string
	// cgroupID, guard and state change as the cgroup comes and goes; they
	// are read and written under Agent.mu.
	cgroupID uint64     // id of the directory now at cgroup; 0 when there is none
	guard    *bpf.Guard // the path's guard in the kernel; nil when the parent is missing
	state    WorkloadState
	netns    string
	labels   map[string]string
	exempt   []bpf.VerdictRule
	listen   *listenerPair
	ident    kernel.WorkloadIdentity // as receipts name it, computed once
	// pending and relays count the workload's connections held by the
	// proxy, against Limits.
	pending, relays atomic.Int64
	// egressPorts are the destination ports the proxy allows; empty: all.
	egressPorts []uint16
	// inbound are the local ports the workload may bind and listen on.
	inbound []bpf.InboundRule
	// refuseAll, when not empty, is the reason every connection is refused.
	refuseAll string
	// pod is the Kubernetes pod, for a workload pod discovery made; never
	// changed once set (a change makes a new workload value).
	pod *PodStatus
	// byContainer is the identity of each of a pod's containers, by the
	// container's cgroup id.
	byContainer map[uint64]kernel.WorkloadIdentity
	// kern decides the workload's connections when it has a policy of its
	// own (a pod's, kube.go); nil: the agent's. Never changed once set: a
	// reload swaps the policy inside the kernel (one atomic pointer), so a
	// decision finds its policy with no lock and no map lookup.
	kern *kernel.Kernel
}

// decider is the kernel whose policy decides the workload: its own, else
// def (the agent's).
func (w *workload) decider(def *kernel.Kernel) *kernel.Kernel {
	if w.kern != nil {
		return w.kern
	}
	return def
}

// identity names the workload in the receipt of an event from the task in
// cgroup cgroupID: for a pod, with the container that task runs in
// (LabelContainer), when the cgroup is one of the pod's containers'.
func (w *workload) identity(cgroupID uint64) kernel.WorkloadIdentity {
	if id, ok := w.byContainer[cgroupID]; ok {
		return id
	}
	return w.ident
}

// workloadIdentity names a workload in receipts: its cgroup relative to the
// cgroup2 mount, as Kubernetes and systemd name cgroups.
func workloadIdentity(name, cgroup string, labels map[string]string) kernel.WorkloadIdentity {
	cg := cgroup
	if mnt, err := cgroupfs.Mount(); err == nil {
		if rel, err := filepath.Rel(mnt, cg); err == nil && !strings.HasPrefix(rel, "..") {
			cg = "/" + rel
		}
	}
	return kernel.WorkloadIdentity{Name: name, CgroupPath: cg, Labels: labels}
}

type registry struct {
	mu    sync.RWMutex
	ids   map[uint32]*workload
	names map[string]*workload
}

func newRegistry() *registry {
	return &registry{ids: map[uint32]*workload{}, names: map[string]*workload{}}
}

func (r *registry) add(w *workload) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids[w.id], r.names[w.name] = w, w
}

func (r *registry) remove(w *workload) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.ids, w.id)
	delete(r.names, w.name)
}

func (r *registry) byID(id uint32) *workload {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.ids[id]
}

func (r *registry) byName(n string) *workload {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.names[n]
}

func (r *registry) all() []*workload {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*workload, 0, len(r.ids))
	for _, w := range r.ids {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

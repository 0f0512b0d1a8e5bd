package agent

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/bpf"
)

// SetWorkloads makes the protected workloads exactly specs (a reload of the
// configuration): new names are protected, names no longer listed are
// unprotected, and a workload whose spec changed is switched in place, its
// new cgroup protected before its old one is let go, so that it is never
// unprotected in between. An invalid list changes nothing; a workload that
// cannot be protected is reported in the error and the others still apply.
// Workloads pod discovery made (kube.go) are not in specs and stay as they are.
func (a *Agent) SetWorkloads(specs []WorkloadSpec) error {
	seen := map[string]bool{}
	for _, s := range specs {
		if s.Name == "" || s.Cgroup == "" {
			return errors.New("set workloads: every workload needs a name and a cgroup")
		}
		if seen[s.Name] {
			return fmt.Errorf("set workloads: workload %s is listed twice", s.Name)
		}
		seen[s.Name] = true
	}
	var errs []error
	for _, s := range specs {
		old := a.reg.byName(s.Name)
		switch {
		case old != nil && old.pod != nil:
			errs = append(errs, fmt.Errorf("workload %s: a discovered pod has that name", s.Name))
		case old == nil:
			errs = append(errs, a.Protect(s))
		case !sameSpec(old, s):
			errs = append(errs, a.replace(old, s))
		}
	}
	for _, w := range a.reg.all() {
		if !seen[w.name] && w.pod == nil { // pods are pod discovery's (kube.go)
			errs = append(errs, a.Unprotect(w.name))
			a.opts.Logger.WithField("workload", w.name).Info("workload no longer configured: unprotected")
		}
	}
	return errors.Join(errs...)
}

func sameSpec(w *workload, s WorkloadSpec) bool {
	return w.cgroup == filepath.Clean(s.Cgroup) && w.netns == s.Netns &&
		maps.Equal(w.labels, s.Labels) && slices.Equal(w.exempt, s.Exempt) &&
		slices.Equal(w.egressPorts, s.EgressPorts) && slices.Equal(w.inbound, inboundRules(s)) &&
		w.refuseAll == s.RefuseAll && samePod(w.pod, s.Pod)
}

// replace switches a protected workload to a changed spec under the same id.
func (a *Agent) replace(old *workload, spec WorkloadSpec) error {
	if !filepath.IsAbs(spec.Cgroup) {
		return fmt.Errorf("update %s: cgroup path %q is not absolute", spec.Name, spec.Cgroup)
	}
	spec.Cgroup = filepath.Clean(spec.Cgroup)
	a.mu.Lock()
	defer a.mu.Unlock()
	lp, err := a.listenerFor(spec.Netns, bpf.Workload{})
	if err != nil {
		return fmt.Errorf("update %s: %w", spec.Name, err)
	}
	nw := newWorkload(old.id, spec, lp)
	samePath := spec.Cgroup == old.cgroup
	if samePath {
		nw.cgroupID, nw.guard, nw.state = old.cgroupID, old.guard, old.state
	}
	a.reg.add(nw)
	if err := a.syncWorkload(nw, true); err != nil {
		a.reg.add(old)
		a.releaseListener(lp)
		return fmt.Errorf("update %s: %w", spec.Name, err)
	}
	if !samePath {
		// The new path is protected and guarded; only now let the old go.
		if old.cgroupID != 0 && old.cgroupID != nw.cgroupID {
			a.objs.Unprotect(old.cgroupID)
		}
		if old.guard != nil && (nw.guard == nil || *old.guard != *nw.guard) {
			a.objs.RemoveGuard(*old.guard)
		}
	}
	a.releaseListener(old.listen)
	a.opts.Logger.WithFields(logrus.Fields{"workload": spec.Name, "cgroup": spec.Cgroup, "netns": spec.Netns,
		"state": string(nw.state)}).Info("workload configuration changed")
	return nil
}

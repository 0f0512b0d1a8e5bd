package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/kernel/config"
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
		w.refuseAll == s.RefuseAll && samePod(w.pod, s.Pod) && w.kern == s.kern
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

// Reloads of pod policies (kube.go). A reload signal reads the kubernetes:
// section again (KubeOptions.ReloadConfig) and loads every policy it names;
// the file watch loads again each policy whose file changed. A policy that
// loads replaces the old one inside its kernel (its pods' next decisions
// use it; a decision in flight keeps its snapshot). A policy that does not
// load is refused: the old one stays in force for its pods, and status says
// why; a name new to the section whose policy does not load leaves its pods
// refused everything. A name dropped from the section leaves its pods
// refused everything. Then every pod is classified again, so that a pod
// whose label names a policy just added gets it.

// reloadAll reloads the section (when it can be read again) and every
// policy it names, on a reload signal.
func (kc *kube) reloadAll(ctx context.Context) error {
	next := (*config.Kubernetes)(nil)
	var errs []error
	if kc.reloadCfg != nil {
		k, err := kc.reloadCfg(ctx)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("kubernetes section reload refused, the section stays as it was: %w", err))
		case k == nil:
			errs = append(errs, errors.New("kubernetes section reload refused: the kubernetes section is gone (removing it takes a restart)"))
		default:
			next = k
		}
		for _, err := range errs {
			kc.a.proxy.errs.add(err)
			kc.log.WithError(err).Error("kubernetes section reload refused")
		}
	}
	kc.mu.Lock()
	if next == nil {
		next = kc.k
	}
	kc.mu.Unlock()
	errs = append(errs, kc.reloadPolicies(ctx, next, nil))
	return errors.Join(errs...)
}

// reloadChanged reloads the policies whose file changed since it was last
// loaded (or tried), and those in object stores that kc.changed reports, on
// the file watch's tick.
func (kc *kube) reloadChanged(ctx context.Context) error {
	kc.mu.Lock()
	k := kc.k
	type file struct {
		path string
		was  fileStamp
	}
	files := map[string]file{}
	others := map[string]string{} // name -> a source that is no local file
	for name, pp := range kc.policies {
		if f := config.PolicyFile(pp.source); f != "" {
			files[name] = file{f, pp.stamp}
		} else {
			others[name] = pp.source
		}
	}
	kc.mu.Unlock()
	var changed []string
	for name, f := range files {
		if st, err := stamp(f.path); err == nil && st != f.was {
			changed = append(changed, name)
		}
	}
	for name, src := range others {
		if kc.changed != nil && kc.changed(src) {
			changed = append(changed, name)
		}
	}
	if len(changed) == 0 {
		return nil
	}
	return kc.reloadPolicies(ctx, k, changed)
}

// reloadPolicies loads the policies of next named in only (nil: all) and
// makes next the section in force, then classifies every pod again.
func (kc *kube) reloadPolicies(ctx context.Context, next *config.Kubernetes, only []string) error {
	// The files' versions before they are read: a change while they are
	// read is seen by the next tick.
	stamps := map[string]fileStamp{}
	for name, src := range next.Policies {
		stamps[name], _ = stamp(config.PolicyFile(src))
	}
	// Loading may fetch over the network: not under the lock.
	loaded := next.LoadEach(ctx, kc.load, only)
	kc.mu.Lock()
	defer kc.mu.Unlock()
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(loaded)) {
		r, src := loaded[name], next.Policies[name]
		pp := kc.policies[name]
		log := kc.log.WithFields(logrus.Fields{"policy": name, "source": src})
		if r.Err != nil {
			errs = append(errs, r.Err)
			if pp == nil {
				log.WithError(r.Err).Error("new pod policy did not load: the pods it names are refused everything")
				continue
			}
			pp.err, pp.stamp = r.Err.Error(), stamps[name]
			log.WithError(r.Err).Error("pod policy reload refused; the old policy stays in force for its pods")
			continue
		}
		if pp == nil {
			k, err := kc.a.podKernel(r.Policy)
			if err != nil {
				errs = append(errs, fmt.Errorf("reload kubernetes.policies.%s: %w", name, err))
				continue
			}
			kc.policies[name] = &podPolicy{source: src, kern: k, loaded: time.Now(), stamp: stamps[name]}
			log.WithField("hash", r.Policy.Hash()).Info("pod policy added")
			continue
		}
		kc.a.setPolicyOf(pp.kern, r.Policy)
		pp.source, pp.loaded, pp.err, pp.stamp = src, time.Now(), "", stamps[name]
		log.WithField("hash", r.Policy.Hash()).Info("pod policy loaded")
	}
	for name := range kc.policies {
		if _, ok := next.Policies[name]; !ok {
			delete(kc.policies, name)
			kc.log.WithField("policy", name).Info("pod policy dropped from kubernetes.policies: the pods it named are refused everything")
		}
	}
	if next != kc.k {
		if next.CRISocket != kc.k.CRISocket || next.CgroupRoot != kc.k.CgroupRoot || next.PollInterval != kc.k.PollInterval {
			kc.log.Warn("kubernetes.cri_socket, cgroup_root and poll_interval take a restart; the reload applies the policies, default_policy and exempt_namespaces")
		}
		k := *kc.k
		k.Policies, k.DefaultPolicy, k.ExemptNamespaces = maps.Clone(next.Policies), next.DefaultPolicy, slices.Clone(next.ExemptNamespaces)
		kc.k = &k
	}
	for _, e := range kc.pods {
		kc.classify(e.pod)
	}
	for _, err := range errs {
		kc.a.proxy.errs.add(err)
	}
	return errors.Join(errs...)
}

package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/cri"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// Pod discovery: with kernel.yaml's kubernetes: section, the daemon follows
// the node's pods through the CRI (internal/cri) and makes each pod Select
// protects a workload named "<namespace>/<name>": its pod-level cgroup (the
// containers' cgroups are below it, so the subtree is covered), its network
// namespace (the host's for a host-network pod), and identity labels that
// receipts carry. A pod removed from the runtime is unprotected (listener,
// map entries and guard released). Exempt pods and the agent's own pod are
// left alone.
//
// Protected from birth: once the first listing is applied, the root of the
// pods' cgroup subtree (kubernetes.cgroup_root, found by cri.FindRoot) is a
// birth root (birth.go): a pod made later is refused the network in the
// kernel until it is classified here. Exempt pods (exempt namespaces, the
// agent's own pod) are exempted by their pod-level cgroup, and the exemption
// withdrawn when they are removed; protected pods need nothing more. The
// agent's own cgroup, when below the root, is exempted before the root is
// set. The root stays pinned when the agent stops (pods fail closed) and is
// set again, the same, when it starts.
//
// Policy per pod: every policy of kubernetes.policies is loaded at start
// (any failure stops the start: fail closed) into a kernel of its own (the
// agent's key and address owner), and a pod's workload points at the kernel
// of the policy Select chose for it, so that each decision takes its pod's
// policy snapshot with one atomic load (workload.decider). A pod whose label
// names no loaded policy is refused everything (kernel.GuardPodPolicy) under
// a built-in policy that blocks everything (refuseAllPolicy), whose hash
// its receipts carry. Reloads (reload.go) swap a policy inside its kernel,
// or add and drop names and classify every pod again.

// Identity labels pod workloads carry in receipts and status. The first
// three are the kubelet's own label names.
const (
	LabelPodNamespace = "io.kubernetes.pod.namespace"
	LabelPodName      = "io.kubernetes.pod.name"
	LabelPodUID       = "io.kubernetes.pod.uid"
	// LabelContainers lists the pod's container names, comma-separated,
	// sorted.
	LabelContainers = "chio.dev/containers"
	// LabelContainer is the container the connecting task runs in, in a
	// receipt (the kubelet's label name), when its cgroup is known.
	LabelContainer = "io.kubernetes.container.name"
	// LabelPolicy is the policy pod discovery chose (kubernetes.policies),
	// or the unknown name the pod's label gave when every connection is
	// refused.
	LabelPolicy = config.PolicyLabel
)

// EnvPodUID names the environment variable holding the agent's own pod UID
// (the DaemonSet sets it from the downward API, metadata.uid).
const EnvPodUID = "CHIO_POD_UID"

// Pod states in status beside the workload states (protected, waiting,
// missing) of protected pods.
const (
	// PodExempt: Select leaves the pod unprotected (exempt namespace, the
	// agent's own pod, default_policy none).
	PodExempt = "exempt"
	// PodUnclassified: the runtime's answer about the pod is incomplete
	// (no cgroup or netns yet; retried when it changes), or protecting it
	// failed (retried every poll interval).
	PodUnclassified = "unclassified"
	// PodStopped: the sandbox is stopped and was not protected: nothing
	// runs in it to protect. Or it is an older sandbox of a pod whose newer
	// one holds the name (a forced deletion): what still runs in it is
	// refused in the kernel, unclassified below the birth root.
	PodStopped = "stopped"
)

// PodStatus is one pod the agent discovered.
type PodStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	SandboxID string `json:"sandbox_id"`
	// State is the workload's state (protected, waiting, missing) for a
	// protected pod, else exempt, unclassified or stopped.
	State string `json:"state"`
	// Policy is the kubernetes.policies name Select chose; empty when the
	// pod is not protected or refused everything.
	Policy string `json:"policy,omitempty"`
	// PolicyHash is the hash of the policy deciding the pod's connections
	// now, read from the kernel its workload decides with (for RefuseAll,
	// the built-in policy refusing everything); empty when not protected.
	PolicyHash string `json:"policy_hash,omitempty"`
	// RefuseAll: protected, every connection refused (Reason says why).
	RefuseAll bool `json:"refuse_all,omitempty"`
	// Reason is why the pod got its policy or none.
	Reason string `json:"reason"`
	// Since is when the agent classified the pod as it is now.
	Since       time.Time `json:"since"`
	HostNetwork bool      `json:"host_network,omitempty"`
	Netns       string    `json:"netns,omitempty"`
	// Cgroup is the pod-level cgroup, absolute.
	Cgroup     string   `json:"cgroup,omitempty"`
	Containers []string `json:"containers,omitempty"`
	// Workload names the workload protecting the pod.
	Workload string `json:"workload,omitempty"`
	// Error is why the pod is unclassified.
	Error string `json:"error,omitempty"`

	// containerCgroups names the pod's containers by their cgroup ids, for
	// receipts; set in a workload's spec.
	containerCgroups map[uint64]string
}

// KubeOptions configure pod discovery in RunDaemon.
type KubeOptions struct {
	// Config is kernel.yaml's kubernetes: section. Required.
	Config *config.Kubernetes
	// SelfUID is the agent's own pod's UID, never protected. Default:
	// SelfPodUID().
	SelfUID string
	// Mount is the cgroup2 mount. Default: cgroupfs.Mount().
	Mount string
	// Policies are Config.Policies already loaded (the command loads them
	// before attaching anything, so that a bad file stops it first). Nil:
	// loaded at start with LoadPolicy.
	Policies map[string]*hushspec.Policy
	// LoadPolicy loads a policy source, at start (without Policies) and on
	// every reload. Default: config.LoadPolicy with no panic file.
	LoadPolicy config.PolicyLoader
	// PolicyChanged, when set, says (once per change) that a policy
	// source the file watch cannot stat, an object store's, changed since
	// LoadPolicy last loaded it (config.PolicySources.Changed); the file
	// watch's tick then reloads it as it does a changed file. It must not
	// block: the store is polled elsewhere.
	PolicyChanged func(source string) bool
	// ReloadConfig reads kernel.yaml's kubernetes: section again, on a
	// reload signal: its policies, default_policy and exempt_namespaces
	// apply (the others take a restart). Nil: the section is fixed, and a
	// reload signal loads its policies again.
	ReloadConfig func(ctx context.Context) (*config.Kubernetes, error)
}

// refuseAllPolicy decides the pods whose label names no loaded policy: their
// connections are refused before it is asked (kernel.GuardPodPolicy), and
// their receipts carry its hash, a policy that refuses everything, rather
// than one that could have allowed them.
const refuseAllPolicy = `hushspec: "1.0.0"
name: chio-refuse-all
rules:
  egress:
    default: block
`

// podPolicy is one policy of kubernetes.policies as the agent holds it.
type podPolicy struct {
	// source is where it was loaded from (kubernetes.policies).
	source string
	// kern decides the pods it was chosen for; a reload of the policy
	// swaps the policy inside it, so their workloads need not change.
	kern *kernel.Kernel
	// loaded is when the policy in force was loaded.
	loaded time.Time
	// err is why the last reload was refused ("" when it was not): the
	// policy loaded before stays in force.
	err string
	// stamp is the version of its file last loaded or tried, for the file
	// watch; zero for a source that is not a local file.
	stamp fileStamp
}

// SelfPodUID returns the agent's own pod UID: $CHIO_POD_UID, else the pod
// of the agent's own cgroup, else "" (not in a pod).
func SelfPodUID() string {
	if uid := os.Getenv(EnvPodUID); uid != "" {
		return uid
	}
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return ""
	}
	defer f.Close()
	rel, err := cri.ParseProcCgroup(f)
	if err != nil {
		return ""
	}
	k, err := cri.ParseKubepods(rel)
	if err != nil {
		return ""
	}
	return k.PodUID
}

// kube follows the pods and keeps their workloads in step.
type kube struct {
	a       *Agent
	k       *config.Kubernetes
	mount   string
	selfUID string
	// root is the pods' cgroup root (absolute), a birth root once the
	// first listing is applied.
	root   string
	client *cri.Client
	log    logrus.FieldLogger
	synced chan struct{}

	// load loads a policy source (KubeOptions.LoadPolicy); reloadCfg
	// reads the section again (KubeOptions.ReloadConfig), or is nil.
	load      config.PolicyLoader
	reloadCfg func(ctx context.Context) (*config.Kubernetes, error)
	// changed reports a changed object store source
	// (KubeOptions.PolicyChanged), or is nil.
	changed func(source string) bool
	// refuse is the kernel of refuseAllPolicy.
	refuse *kernel.Kernel

	mu sync.Mutex
	// policies are the loaded kubernetes.policies, by name; k (the section
	// in force) changes with them on a reload, both under mu.
	policies map[string]*podPolicy
	pods     map[string]*podEntry // by sandbox id
	// owner names, by workload name, the sandbox whose workload it is: a
	// pod's sandbox made again (a new id, same name) takes it over.
	owner map[string]string
}

type podEntry struct {
	pod    cri.Pod
	status PodStatus
	// exemptID is the pod-level cgroup exempted for an exempt pod, 0 if
	// none: withdrawn when the pod is removed.
	exemptID uint64
}

// startKube dials the runtime; run follows it.
func (a *Agent) startKube(ctx context.Context, o KubeOptions) (*kube, error) {
	if o.Config == nil {
		return nil, errors.New("start pod discovery: no kubernetes section")
	}
	if o.Mount == "" {
		m, err := cgroupfs.Mount()
		if err != nil {
			return nil, fmt.Errorf("start pod discovery: %w", err)
		}
		o.Mount = m
	}
	if o.SelfUID == "" {
		o.SelfUID = SelfPodUID()
	}
	if o.LoadPolicy == nil {
		o.LoadPolicy = func(ctx context.Context, src string) (*hushspec.Policy, error) {
			return config.LoadPolicy(ctx, src, "")
		}
	}
	pols := o.Policies
	if pols == nil {
		var err error
		if pols, err = o.Config.LoadPolicies(ctx, o.LoadPolicy); err != nil {
			return nil, fmt.Errorf("start pod discovery: %w", err)
		}
	}
	policies := map[string]*podPolicy{}
	for name, src := range o.Config.Policies {
		if pols[name] == nil {
			return nil, fmt.Errorf("start pod discovery: kubernetes.policies.%s (%s) is not loaded", name, src)
		}
		k, err := a.podKernel(pols[name])
		if err != nil {
			return nil, fmt.Errorf("start pod discovery: policy %s: %w", name, err)
		}
		st, _ := stamp(config.PolicyFile(src))
		policies[name] = &podPolicy{source: src, kern: k, loaded: time.Now(), stamp: st}
	}
	refuse, err := hushspec.Parse([]byte(refuseAllPolicy))
	if err != nil {
		return nil, fmt.Errorf("start pod discovery: %w", err)
	}
	refuseK, err := a.podKernel(refuse)
	if err != nil {
		return nil, fmt.Errorf("start pod discovery: %w", err)
	}
	rel, err := cri.FindRoot(o.Mount, o.Config.CgroupRoot)
	if err != nil {
		return nil, fmt.Errorf("start pod discovery: %w (name it with kubernetes.cgroup_root)", err)
	}
	root := cri.Abs(o.Mount, rel)
	// The agent's own cgroup, if below the pods' root, before any socket
	// of its own: a root pinned by an earlier run refuses it otherwise.
	if err := a.exemptSelf(root); err != nil {
		return nil, fmt.Errorf("start pod discovery: %w", err)
	}
	sock, err := cri.Socket(o.Config.CRISocket)
	if err != nil {
		return nil, fmt.Errorf("start pod discovery: %w", err)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := cri.Dial(dctx, sock)
	if err != nil {
		return nil, fmt.Errorf("start pod discovery: %w", err)
	}
	kc := &kube{a: a, k: o.Config, mount: o.Mount, selfUID: o.SelfUID, root: root, client: c,
		log: a.opts.Logger.WithField("cri_socket", sock), synced: make(chan struct{}),
		pods: map[string]*podEntry{}, owner: map[string]string{},
		load: o.LoadPolicy, reloadCfg: o.ReloadConfig, changed: o.PolicyChanged, refuse: refuseK, policies: policies}
	a.mu.Lock()
	a.kube = kc
	a.mu.Unlock()
	name, ver, _ := c.Version(ctx)
	kc.log.WithFields(logrus.Fields{"runtime": name, "runtime_version": ver, "self_pod_uid": o.SelfUID}).Info("following the node's pods through the CRI")
	return kc, nil
}

// run follows the runtime until ctx ends; synced is closed after the first
// listing has been applied.
func (kc *kube) run(ctx context.Context) error {
	defer kc.client.Close()
	interval := time.Duration(kc.k.PollInterval)
	if interval <= 0 {
		interval = config.DefaultPollInterval
	}
	w := &cri.Watcher{Client: kc.client, Interval: interval, Log: kc.log}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A pod's cgroup appearing lists the pods at once: classified before
	// its containers run, rather than up to a poll interval later.
	kick := make(chan struct{}, 1)
	if err := cri.NotifyCgroups(ctx, kc.root, kick); err != nil {
		kc.log.WithError(err).Warn("new pods are found by the poll alone")
	} else {
		w.Kick = kick
	}
	retried := make(chan struct{})
	go func() { defer close(retried); kc.retryEvery(ctx, interval) }()
	defer func() { cancel(); <-retried }()
	first := true
	return w.Run(ctx, func(changes []cri.Change) {
		kc.apply(changes)
		if first {
			first = false
			// The pods that exist are protected or exempted: from now
			// on a pod the agent has not classified is refused.
			if err := kc.a.SetBirthRoot(kc.root); err != nil {
				kc.a.proxy.errs.add(err)
				kc.log.WithError(err).Error("pods are not protected from birth")
			} else {
				kc.pruneRoots()
			}
			kc.pruneExempt()
			close(kc.synced)
		}
	})
}

// retryEvery classifies again, every interval, the pods whose protection
// failed (a listener that could not be opened in their netns...): the
// watcher reports a pod again only when it changes.
func (kc *kube) retryEvery(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		kc.mu.Lock()
		for _, e := range kc.pods {
			if e.status.State == PodUnclassified && e.pod.Err == nil {
				kc.classify(e.pod)
			}
		}
		kc.mu.Unlock()
	}
}

// apply brings the workloads in step with one listing's changes: removals
// first, so that a pod's new sandbox can take its name over.
func (kc *kube) apply(changes []cri.Change) {
	kc.mu.Lock()
	defer kc.mu.Unlock()
	slices.SortStableFunc(changes, func(x, y cri.Change) int {
		return boolInt(x.Kind != cri.PodRemoved) - boolInt(y.Kind != cri.PodRemoved)
	})
	for _, ch := range changes {
		if ch.Kind == cri.PodRemoved {
			kc.remove(ch.Pod)
			continue
		}
		kc.classify(ch.Pod)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// remove unprotects a pod gone from the runtime, unless its name belongs to
// another (newer) sandbox.
func (kc *kube) remove(p cri.Pod) {
	e := kc.pods[p.SandboxID]
	delete(kc.pods, p.SandboxID)
	if e != nil && e.exemptID != 0 {
		if err := kc.a.objs.Unexempt(e.exemptID); err != nil {
			kc.a.proxy.errs.add(err)
			kc.log.WithError(err).WithField("pod", p.Namespace+"/"+p.Name).Error("withdraw removed pod's exemption")
		}
		e.exemptID = 0
	}
	if e == nil || e.status.Workload == "" || kc.owner[e.status.Workload] != p.SandboxID {
		return
	}
	delete(kc.owner, e.status.Workload)
	if err := kc.a.Unprotect(e.status.Workload); err != nil {
		kc.a.proxy.errs.add(err)
		kc.log.WithError(err).WithField("workload", e.status.Workload).Error("unprotect removed pod")
		return
	}
	kc.log.WithField("workload", e.status.Workload).Info("pod removed: unprotected")
}

// classify decides what a new or changed pod gets, and applies it.
func (kc *kube) classify(p cri.Pod) {
	e := kc.pods[p.SandboxID]
	if e == nil {
		e = &podEntry{}
		kc.pods[p.SandboxID] = e
	}
	e.pod = p
	sel := choose(kc.k, kc.policies, p, kc.selfUID)
	name := p.Namespace + "/" + p.Name
	st := PodStatus{Namespace: p.Namespace, Name: p.Name, UID: p.UID, SandboxID: p.SandboxID,
		Policy: sel.Policy, RefuseAll: sel.RefuseAll, Reason: sel.Reason, HostNetwork: p.HostNetwork,
		Netns: p.Netns, Containers: containerNames(p)}
	if p.Cgroup != "" {
		st.Cgroup = p.CgroupPath(kc.mount)
	}
	owned := kc.owner[name] == p.SandboxID
	if st.Cgroup != "" && st.Cgroup != e.status.Cgroup && !strings.HasPrefix(st.Cgroup, kc.root+"/") {
		// Classified all the same; said once per cgroup: the root is not
		// where the runtime puts the pods.
		err := fmt.Errorf("pod %s: cgroup %s is not below the pods' root %s: pods made there pass undecided until classified (name the root in kubernetes.cgroup_root)", name, st.Cgroup, kc.root)
		kc.a.proxy.errs.add(err)
		kc.log.WithError(err).Error("pod outside the birth root")
	}
	switch {
	case !sel.Protect:
		st.State = PodExempt
		kc.exempt(e, p, &st)
		if owned {
			// Not reachable today (labels of a sandbox do not change);
			// kept so that exempt always means unprotected.
			delete(kc.owner, name)
			kc.a.Unprotect(name)
		}
	case p.Err != nil:
		// Incomplete: never unprotected on that account. A pod already
		// protected stays as it was.
		if owned {
			kc.log.WithError(p.Err).WithField("workload", name).Warn("pod's runtime status incomplete; its protection stays as it was")
			return
		}
		st.State, st.Error = PodUnclassified, p.Err.Error()
	case !p.Ready && !owned:
		st.State = PodStopped
	case !owned && kc.owner[name] != "" && kc.pods[kc.owner[name]] != nil && kc.pods[kc.owner[name]].pod.CreatedAt.After(p.CreatedAt):
		// An older sandbox of a pod whose newer one holds the name.
		st.State = PodStopped
	default:
		st.Workload = name
		spec := kc.spec(p, sel, st)
		if err := kc.a.protectPod(spec); err != nil {
			kc.a.proxy.errs.add(err)
			kc.log.WithError(err).WithField("workload", name).Error("protect pod")
			st.State, st.Error, st.Workload = PodUnclassified, err.Error(), ""
			break
		}
		if e.exemptID != 0 {
			// Exempt until a reload chose a policy for it (default_policy
			// or exempt_namespaces changed): protected now, so the
			// exemption goes.
			if err := kc.a.objs.Unexempt(e.exemptID); err != nil {
				kc.a.proxy.errs.add(err)
				kc.log.WithError(err).WithField("workload", name).Error("withdraw the exemption of a pod now protected")
			}
			e.exemptID = 0
		}
		if !owned {
			if prev := kc.owner[name]; prev != "" && kc.pods[prev] != nil {
				// What classify would now say of it: an older sandbox.
				ps := &kc.pods[prev].status
				ps.Workload, ps.State, ps.Since = "", PodStopped, time.Now()
			}
			kc.owner[name] = p.SandboxID
		}
	}
	if e.status.State != st.State || e.status.Workload != st.Workload || e.status.Since.IsZero() {
		st.Since = time.Now()
	} else {
		st.Since = e.status.Since
	}
	e.status = st
}

// choose is Select, failing closed on a policy the section names but the
// agent does not hold (its first load by a reload failed): the pod is
// refused everything rather than decided by another policy.
func choose(k *config.Kubernetes, loaded map[string]*podPolicy, p cri.Pod, selfUID string) cri.Selection {
	sel := cri.Select(k, p, selfUID)
	if sel.Protect && !sel.RefuseAll && loaded[sel.Policy] == nil {
		return cri.Selection{Protect: true, RefuseAll: true,
			Reason: fmt.Sprintf("policy %q did not load: every connection refused until it does", sel.Policy)}
	}
	return sel
}

// podKernel is a kernel of the agent's (its key, its address owner) for
// one pod policy.
func (a *Agent) podKernel(p *hushspec.Policy) (*kernel.Kernel, error) {
	return kernel.New(kernel.Options{Policy: p, SigningKey: a.opts.Key, AddressOwner: a.proxy.resolver})
}

// exempt exempts an exempt pod's pod-level cgroup from the birth root, so
// that it and its containers are not refused. A pod whose cgroup is not
// known or not there yet is unclassified (retried); a stopped one has
// nothing to exempt.
func (kc *kube) exempt(e *podEntry, p cri.Pod, st *PodStatus) {
	if p.Cgroup == "" {
		if p.Ready {
			st.State, st.Error = PodUnclassified, "exempt, but the runtime did not say its cgroup yet"
			if p.Err != nil {
				st.Error = p.Err.Error()
			}
		}
		return
	}
	id, err := classifiedCgroup(st.Cgroup)
	if err == nil && id == e.exemptID {
		return
	}
	if err == nil {
		err = kc.a.objs.Exempt(id)
	}
	if err != nil {
		if errors.Is(err, errCgroupMissing) && !p.Ready {
			return
		}
		kc.a.proxy.errs.add(err)
		kc.log.WithError(err).WithField("pod", p.Namespace+"/"+p.Name).Error("exempt pod")
		st.State, st.Error = PodUnclassified, err.Error()
		return
	}
	if e.exemptID != 0 {
		kc.a.objs.Unexempt(e.exemptID) // its cgroup was made again
	}
	e.exemptID = id
	kc.log.WithFields(logrus.Fields{"pod": p.Namespace + "/" + p.Name, "cgroup": st.Cgroup}).Info("pod exempt")
}

// pruneRoots withdraws the birth roots pinned by an earlier run that are not
// the root now (kubernetes.cgroup_root changed): called once the root in
// force is set, so that there is never a moment without one. A root left
// behind would refuse the network to whatever runs below it, pods or not,
// until `uninstall`.
func (kc *kube) pruneRoots() {
	id, err := cgroupAt(kc.root)
	if err != nil {
		return
	}
	ids, err := kc.a.objs.BirthRoots()
	if err != nil {
		kc.log.WithError(err).Warn("list birth roots")
		return
	}
	for _, old := range ids {
		if old == id {
			continue
		}
		if err := kc.a.objs.RemoveBirthRoot(old); err != nil {
			kc.a.proxy.errs.add(err)
			kc.log.WithError(err).WithField("cgroup_id", old).Error("withdraw an earlier run's birth root")
			continue
		}
		kc.log.WithField("cgroup_id", old).Info("birth root of an earlier run withdrawn: kubernetes.cgroup_root names another")
	}
}

// pruneExempt withdraws the exemptions, pinned by an earlier run, of
// cgroups that are gone (pods removed while no agent ran).
func (kc *kube) pruneExempt() {
	ids, err := kc.a.objs.Exempted()
	if err != nil {
		kc.log.WithError(err).Warn("list exempt cgroups")
		return
	}
	for _, id := range ids {
		if _, err := cgroupPathOf(id); errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
			kc.a.objs.Unexempt(id)
		}
	}
}

// exemptSelf exempts the agent's own cgroup if it is below root.
func (a *Agent) exemptSelf(root string) error {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return fmt.Errorf("exempt own cgroup: %w", err)
	}
	defer f.Close()
	rel, err := ownCgroup(f, os.Getenv(EnvPodUID))
	if err != nil {
		return fmt.Errorf("exempt own cgroup: %w", err)
	}
	mnt, err := cgroupfs.Mount()
	if err != nil {
		return fmt.Errorf("exempt own cgroup: %w", err)
	}
	self := cri.Abs(mnt, rel)
	if self == root || !strings.HasPrefix(self, root+"/") {
		return nil
	}
	return a.Exempt(self)
}

// ownCgroup is the agent's cgroup path from /proc/self/cgroup. In a pod
// (podUID set) it refuses "0::/": a pod is never in the root cgroup, so a
// cgroup namespace hides where the agent is, and below a pinned root its own
// sockets would be refused with no word said.
func ownCgroup(procCgroup io.Reader, podUID string) (string, error) {
	rel, err := cri.ParseProcCgroup(procCgroup)
	if err != nil {
		return "", err
	}
	if rel == "" && podUID != "" {
		return "", fmt.Errorf("/proc/self/cgroup reads 0::/ in pod %s: a cgroup namespace hides the agent's cgroup (run its container in the host's cgroup namespace: privileged on containerd and CRI-O)", podUID)
	}
	return rel, nil
}

// spec is the workload of a protected pod.
func (kc *kube) spec(p cri.Pod, sel cri.Selection, st PodStatus) WorkloadSpec {
	labels := map[string]string{
		LabelPodNamespace: p.Namespace,
		LabelPodName:      p.Name,
		LabelPodUID:       p.UID,
	}
	if len(st.Containers) > 0 {
		labels[LabelContainers] = strings.Join(st.Containers, ",")
	}
	// InboundAll: a pod's ports are its Service's business, and the CRI does
	// not say which it serves; refusing every bind() would break every
	// serving pod. Egress is what pod discovery mediates (docs/kernel-yaml.md).
	spec := WorkloadSpec{Name: st.Workload, Cgroup: st.Cgroup, Netns: p.Netns, Labels: labels, InboundAll: true}
	if sel.RefuseAll {
		// The name the pod asked for (its label, else default_policy).
		asked, ok := p.Labels[config.PolicyLabel]
		if !ok {
			asked = kc.k.DefaultPolicy
		}
		labels[LabelPolicy] = asked
		spec.RefuseAll = sel.Reason
		spec.kern = kc.refuse
	} else {
		labels[LabelPolicy] = sel.Policy
		spec.kern = kc.policies[sel.Policy].kern
	}
	pod := st
	pod.Since, pod.State = time.Time{}, "" // status fills them; not part of the spec
	pod.containerCgroups = map[uint64]string{}
	for _, c := range p.Containers {
		if c.Cgroup == "" || c.Name == "" {
			continue
		}
		// A container whose cgroup is not there yet is named once it is
		// (its start changes the listing).
		if id, err := cgroupfs.ID(cri.Abs(kc.mount, c.Cgroup)); err == nil {
			pod.containerCgroups[id] = c.Name
		}
	}
	spec.Pod = &pod
	return spec
}

// containerIdentities are a pod workload's identities per container cgroup:
// its own, with the container's name.
func containerIdentities(spec WorkloadSpec) map[uint64]kernel.WorkloadIdentity {
	if spec.Pod == nil || len(spec.Pod.containerCgroups) == 0 {
		return nil
	}
	out := make(map[uint64]kernel.WorkloadIdentity, len(spec.Pod.containerCgroups))
	for id, name := range spec.Pod.containerCgroups {
		labels := maps.Clone(spec.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		labels[LabelContainer] = name
		out[id] = workloadIdentity(spec.Name, spec.Cgroup, labels)
	}
	return out
}

func containerNames(p cri.Pod) []string {
	var names []string
	for _, c := range p.Containers {
		if c.Name != "" && !slices.Contains(names, c.Name) {
			names = append(names, c.Name)
		}
	}
	slices.Sort(names)
	return names
}

// status lists the discovered pods, by namespace and name.
func (kc *kube) status() []PodStatus {
	kc.mu.Lock()
	defer kc.mu.Unlock()
	out := make([]PodStatus, 0, len(kc.pods))
	for _, e := range kc.pods {
		out = append(out, e.status)
	}
	slices.SortFunc(out, func(x, y PodStatus) int {
		return strings.Compare(x.Namespace+"/"+x.Name+"/"+x.SandboxID, y.Namespace+"/"+y.Name+"/"+y.SandboxID)
	})
	return out
}

// PodPolicyStatus is one policy of kubernetes.policies as the agent holds
// it.
type PodPolicyStatus struct {
	// Name is its kubernetes.policies key, the chio.dev/policy label value
	// that chooses it.
	Name string `json:"name"`
	// PolicyName and Hash are the policy's own name and hash, as in force.
	PolicyName string    `json:"policy_name"`
	Hash       string    `json:"hash"`
	Source     string    `json:"source"`
	LoadedAt   time.Time `json:"loaded_at"`
	// Default: default_policy names it.
	Default bool `json:"default,omitempty"`
	// Pods is how many protected pods it decides.
	Pods int `json:"pods"`
	// ReloadError is why its last reload was refused (the policy in force
	// is the one loaded before).
	ReloadError string `json:"reload_error,omitempty"`
}

// policyStatus lists the pod policies by name.
func (kc *kube) policyStatus() []PodPolicyStatus {
	kc.mu.Lock()
	defer kc.mu.Unlock()
	out := make([]PodPolicyStatus, 0, len(kc.policies))
	for _, name := range slices.Sorted(maps.Keys(kc.policies)) {
		pp := kc.policies[name]
		snap := pp.kern.Snapshot()
		ps := PodPolicyStatus{Name: name, PolicyName: snap.Policy().Name(), Hash: snap.Hash(), Source: pp.source,
			LoadedAt: pp.loaded, Default: kc.k.DefaultPolicy == name, ReloadError: pp.err}
		for _, e := range kc.pods {
			if e.status.Workload != "" && !e.status.RefuseAll && e.status.Policy == name {
				ps.Pods++
			}
		}
		out = append(out, ps)
	}
	return out
}

// protectPod protects a pod's workload, or switches the protected one to a
// changed spec in place (never unprotected in between).
func (a *Agent) protectPod(spec WorkloadSpec) error {
	old := a.reg.byName(spec.Name)
	switch {
	case old == nil:
		return a.Protect(spec)
	case old.pod == nil:
		return fmt.Errorf("protect pod %s: a workload kernel.yaml lists has that name", spec.Name)
	case !sameSpec(old, spec):
		return a.replace(old, spec)
	}
	return nil
}

// samePod compares what a pod workload's spec says of its pod.
func samePod(a, b *PodStatus) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Namespace == b.Namespace && a.Name == b.Name && a.UID == b.UID && a.SandboxID == b.SandboxID &&
		a.Policy == b.Policy && a.RefuseAll == b.RefuseAll && a.Reason == b.Reason && a.HostNetwork == b.HostNetwork &&
		a.Netns == b.Netns && a.Cgroup == b.Cgroup && slices.Equal(a.Containers, b.Containers) &&
		maps.Equal(a.containerCgroups, b.containerCgroups)
}

package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/dnsproxy"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/ship"
)

// DefaultAgentMark is the SO_MARK on the agent's own upstream sockets, which
// the programs never redirect ("CHIA" in ASCII).
const DefaultAgentMark = 0x43484941

// Options configure Start.
type Options struct {
	// Policy decides every connection. Required; SetPolicy replaces it.
	Policy *hushspec.Policy
	// PolicySource names where the policy came from, for status.
	PolicySource string
	// Key signs every receipt. Required.
	Key ed25519.PrivateKey
	// Log receives every receipt. Required. In sync mode a connection is
	// relayed only after its receipt is durable.
	Log *receipts.Log
	// Shipper, when set, ships Log's sealed batches to NATS (the caller
	// runs it); status and metrics report it. Default none.
	Shipper *ship.Shipper
	// PinDir pins programs, links and maps so that they outlive the agent
	// (fail-closed while it is down; adopted when it restarts). One agent
	// at a time: Start refuses a PinDir a live process owns
	// (bpf.ErrPinDirInUse). Empty: no pinning, everything goes away with
	// Close.
	PinDir string
	// AttachCgroup is the cgroup the programs attach to; it must contain
	// every workload. Default: the cgroup2 root.
	AttachCgroup string
	// ListenPort is the proxy's port on 127.0.0.1 and ::1 in every network
	// namespace. 0 (default): a free port per namespace, or the port the
	// pinned state names for an adopted workload.
	ListenPort uint16
	// Resolvers are the DNS servers of protected workloads. With DNS set,
	// they are the upstreams its handler forwards to, and no workload
	// reaches them directly (the kernel sends all of its DNS to the agent).
	// Without DNS, protected workloads may reach them directly (UDP, and
	// TCP to port 53).
	Resolvers []netip.AddrPort
	// DNS answers protected workloads' DNS: with it, every DNS message of
	// theirs (UDP and TCP to port 53, any address, IPv4 and IPv6) reaches
	// the agent's DNS listeners in their namespace (dns.go) and is answered
	// by DNS, called concurrently. Danger: nil leaves DNS to Resolvers
	// unmediated, a channel out of every workload.
	DNS dnsproxy.Handler
	// DNSProxy, when set and DNS is nil, makes DNS the agent's DNS proxy
	// (internal/dnsproxy; docs/dns.md) built from these options: each query
	// decided by its workload's policy and receipted, allowed ones forwarded
	// to Resolvers (Upstreams, when empty), Hosts answered statically, and
	// what each workload is told becomes its anti-spoofing truth. Workload,
	// Record and Registerer are the agent's. With no Resolvers and no
	// Upstreams it is not built: protected workloads then have no DNS.
	DNSProxy *dnsproxy.Options
	// Hosts are static answers for the anti-spoofing check.
	Hosts map[string][]netip.Addr
	// Timeouts bound each connection; zero fields take their defaults.
	Timeouts Timeouts
	// Limits bound what workloads can make the agent hold; zero fields
	// take their defaults.
	Limits Limits
	// AgentMark is the SO_MARK of the agent's sockets. Default
	// DefaultAgentMark. The hooks honour it only on the agent's own
	// process's sockets, so a workload able to set marks (CAP_NET_ADMIN or
	// CAP_NET_RAW) gains nothing by setting it. Danger: where the agent
	// cannot learn its process id as the kernel sees it (bpf.HostIdentity), the
	// mark is honoured on any socket (Start logs a warning), and such a
	// workload could bypass the proxy.
	AgentMark uint32
	// Logger receives operational logs. Default: discarded.
	Logger logrus.FieldLogger
	// OnDecision, when set, is called after every decision (from many
	// goroutines at once).
	OnDecision func(Decision)
	// ResyncInterval is how often every workload's cgroup path is checked
	// against the datapath besides inotify notices. Default
	// DefaultResyncInterval.
	ResyncInterval time.Duration

	// editSpec, set by tests, makes the agent a binary of another map
	// layout (bpf.Options.EditSpec).
	editSpec func(*ebpf.CollectionSpec) error
}

// WorkloadSpec describes a workload to protect.
type WorkloadSpec struct {
	// Name identifies the workload in receipts and status. Required.
	Name string
	// Cgroup is the workload's cgroup directory, absolute. Required. It need
	// not exist yet: the workload is protected when it appears, and a
	// directory removed and made again is protected again (see bypath.go).
	Cgroup string
	// Netns is the path of the network namespace its processes use
	// ("" for the agent's own).
	Netns string
	// Labels are identity labels recorded in receipts.
	Labels map[string]string
	// Exempt destinations pass without the proxy (and without receipts).
	Exempt []bpf.VerdictRule
	// EgressPorts, when not empty, are the only destination ports the proxy
	// allows the workload's connections to reach; a connection to another
	// port is denied with a receipt (GuardPort), whatever the policy says of
	// the name. Default: every port.
	EgressPorts []uint16
	// InboundPorts are the local ports the workload may bind to (TCP and
	// UDP) and listen on. Default: none; a bind() to any other fixed port
	// fails with EPERM, and a listener on a port the kernel picks receives
	// nothing; each refusal gets a deny receipt.
	InboundPorts []uint16
	// InboundAll lets the workload bind and listen on every port, as it could
	// before inbound was decided. Danger: any peer that can reach the
	// workload's addresses can then connect in, with no decision and no
	// receipt.
	InboundAll bool
	// RefuseAll, when not empty, refuses every TCP connection of the
	// workload (guard kernel.GuardPodPolicy), whatever the policy says, with
	// this as the receipt's reason: a pod whose label names no known policy.
	RefuseAll string
	// Pod, set by pod discovery (kube.go), is the Kubernetes pod this
	// workload is; nil for a workload kernel.yaml lists. Reloads of the
	// listed workloads leave pod workloads alone.
	Pod *PodStatus
	// kern, set by pod discovery, is the kernel whose policy decides the
	// workload's connections (its pod's kubernetes.policies entry); nil:
	// the agent's own policy.
	kern *kernel.Kernel
}

// Agent is a running node agent: programs attached, listeners open.
type Agent struct {
	opts   Options
	objs   *bpf.Objects
	events *bpf.EventReader
	proxy  *proxy
	// dns answers the DNS listeners; nil without Options.DNS.
	dns *dnsServer
	// refusals count the kernel refusals the agent has written receipts
	// for, and those it could not (a receipt error, an unknown workload).
	refusals struct{ receipted, unreceipted atomic.Uint64 }
	// refusalQ carries kernel refusals to the goroutines that write their
	// receipts (writeRefusals), which refusalWG counts.
	refusalQ  chan bpf.Event
	refusalWG sync.WaitGroup
	// kern holds the policy in force and decides every connection and
	// refusal under one snapshot of it.
	kern *kernel.Kernel
	// rules resolves the rule ids of kernel refusals to their patterns.
	rules ruleTable

	mu        sync.Mutex
	listeners map[string]*listenerPair // by netns path
	reg       *registry
	nextID    uint32
	polSource string
	polLoaded time.Time
	started   time.Time
	resyncReq chan struct{} // asks watchCgroups for a resync
	// known is closed once the agent knows its workloads; readEvents waits
	// for it (see UnprotectStale).
	known     chan struct{}
	knownOnce sync.Once
	// kube follows the node's pods (kube.go); nil without pod discovery.
	kube *kube

	ctx       context.Context
	cancel    context.CancelFunc
	bg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Start loads and attaches the programs (adopting pinned state when PinDir
// has it) and starts reading kernel refusal events. Protect then adds
// workloads. When PinDir holds links of another map layout (an upgrade),
// Start attaches nothing: those links keep their programs until handOver,
// which RunDaemon calls once the workloads are in this agent's maps.
func Start(opts Options) (*Agent, error) {
	if opts.Policy == nil {
		return nil, errors.New("start agent: no policy")
	}
	if opts.Key == nil {
		return nil, fmt.Errorf("start agent: %w", ErrNoKey)
	}
	if opts.Log == nil {
		return nil, errors.New("start agent: no receipt log")
	}
	if opts.Logger == nil {
		l := logrus.New()
		l.Out = io.Discard
		opts.Logger = l
	}
	if opts.AgentMark == 0 {
		opts.AgentMark = DefaultAgentMark
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = DefaultResyncInterval
	}
	if opts.AttachCgroup == "" {
		mnt, err := cgroupfs.Mount()
		if err != nil {
			return nil, fmt.Errorf("start agent: %w", err)
		}
		opts.AttachCgroup = mnt
	}
	res := newResolver(opts.Hosts)
	kern, err := kernel.New(kernel.Options{Policy: opts.Policy, SigningKey: opts.Key, AddressOwner: res})
	if err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	if err := bpf.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	me, err := bpf.HostIdentity()
	if err != nil {
		opts.Logger.WithError(err).Warn("the agent cannot name its process to the kernel: its socket mark is honoured on any " +
			"process's sockets, and a protected workload holding CAP_NET_ADMIN or CAP_NET_RAW could set it and pass undecided")
	}
	objs, err := bpf.Load(bpf.Options{AgentMark: opts.AgentMark, AgentPID: me.PID, AgentStart: me.Start, PinDir: opts.PinDir, EditSpec: opts.editSpec})
	if err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	a := &Agent{
		kern:      kern,
		opts:      opts,
		objs:      objs,
		listeners: map[string]*listenerPair{},
		reg:       newRegistry(),
		nextID:    1,
		polSource: opts.PolicySource,
		polLoaded: time.Now(),
		started:   time.Now(),
		resyncReq: make(chan struct{}, 1),
		known:     make(chan struct{}),
	}
	// Existing (pinned) workloads keep their ids: their in-flight originals
	// and events name them.
	pinned, _ := objs.Workloads()
	for _, w := range pinned {
		if w.ID >= a.nextID {
			a.nextID = w.ID + 1
		}
	}
	if guards, _ := objs.Guards(); len(pinned) == 0 && len(guards) == 0 {
		// Nothing pinned: no event can name a workload this agent has yet
		// to be told about.
		a.workloadsKnown()
	}
	direct := opts.Resolvers
	buildProxy := opts.DNS == nil && opts.DNSProxy != nil && (len(opts.Resolvers) > 0 || len(opts.DNSProxy.Upstreams) > 0)
	if opts.DNS != nil || buildProxy {
		direct = nil // upstreams of the handler only
	} else if len(direct) > 0 {
		opts.Logger.WithField("resolvers", direct).Warn("no DNS proxy: protected workloads reach these resolvers directly, " +
			"with any name and any payload")
	}
	if err := objs.SetResolvers(direct); err != nil {
		objs.Close()
		return nil, fmt.Errorf("start agent: %w", err)
	}
	if err := objs.AttachCgroup(opts.AttachCgroup); err != nil {
		objs.Close()
		return nil, fmt.Errorf("start agent: %w", err)
	}
	a.events, err = objs.OpenEvents()
	if err != nil {
		objs.Close()
		return nil, fmt.Errorf("start agent: %w", err)
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.proxy = &proxy{
		objs:      objs,
		log:       opts.Log,
		kern:      a.kern,
		workloads: a.reg,
		resolver:  res,
		timeouts:  opts.Timeouts.withDefaults(),
		limits:    opts.Limits.withDefaults(),
		overflow:  newOverflow(),
		mark:      opts.AgentMark,
		logger:    opts.Logger,
		onDecide:  opts.OnDecision,
		counts:    &counters{},
		errs:      &errorRing{},
		now:       time.Now,

		idle: newIdleSet(opts.Timeouts.withDefaults().Idle),
	}
	a.proxy.metrics = newMetrics(a)
	if buildProxy {
		p, err := a.newDNSProxy(*opts.DNSProxy, res)
		if err != nil {
			a.cancel()
			a.events.Close()
			objs.Close()
			return nil, fmt.Errorf("start agent: %w", err)
		}
		opts.DNS = p
		a.opts.DNS = p
		a.bg.Add(1)
		go func() { defer a.bg.Done(); p.Run(a.ctx) }()
	}
	if opts.DNS != nil {
		a.dns = newDNSServer(opts.DNS, objs, a.reg, a.proxy)
	}
	lim := a.proxy.limits
	opts.Logger.WithFields(logrus.Fields{"head_bytes": lim.HeadBytes, "pending": lim.Pending, "pending_per_workload": lim.PendingPerWorkload,
		"relays": lim.Relays, "relays_per_workload": lim.RelaysPerWorkload, "memory_ceiling_mib": lim.MemoryCeiling() >> 20}).Info("connection limits")
	a.refusalQ = make(chan bpf.Event, 1024)
	for range refusalWriters {
		a.refusalWG.Add(1)
		go func() { defer a.refusalWG.Done(); a.writeRefusals() }()
	}
	a.bg.Add(5)
	go func() { defer a.bg.Done(); a.readEvents() }()
	go func() { defer a.bg.Done(); a.takeRefusals(a.ctx) }()
	go func() { defer a.bg.Done(); a.proxy.idle.run(a.ctx.Done()) }()
	go func() { defer a.bg.Done(); a.proxy.overflow.run(a.ctx, a.proxy) }()
	go func() { defer a.bg.Done(); a.watchCgroups(opts.ResyncInterval) }()
	return a, nil
}

// Protect starts protecting a workload: its namespace gets a listener, its
// exemptions go into the verdict map, its path is guarded, then its cgroup
// goes into the workloads map. From that moment every TCP connect of its
// processes reaches the proxy, and its UDP is refused except DNS. A cgroup
// that does not exist yet is not an error: the workload is reported waiting
// (or missing, when its parent is missing too) and protected when it
// appears.
func (a *Agent) Protect(spec WorkloadSpec) error {
	if spec.Name == "" || spec.Cgroup == "" {
		return errors.New("protect: workload needs a name and a cgroup")
	}
	if !filepath.IsAbs(spec.Cgroup) {
		return fmt.Errorf("protect %s: cgroup path %q is not absolute", spec.Name, spec.Cgroup)
	}
	spec.Cgroup = filepath.Clean(spec.Cgroup)
	cgID, err := cgroupAt(spec.Cgroup)
	if err != nil && !errors.Is(err, errCgroupMissing) {
		return fmt.Errorf("protect %s: %w", spec.Name, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old := a.reg.byName(spec.Name); old != nil {
		return fmt.Errorf("protect %s: already protected", spec.Name)
	}
	// A workload the pinned state already knows (by its cgroup, or by its
	// guarded path when the cgroup was made again while no agent ran) keeps
	// its id: in-flight originals and events name it.
	id := a.nextID
	var pinnedW bpf.Workload
	if pinned, err := a.objs.Workloads(); err == nil && cgID != 0 {
		if w, ok := pinned[cgID]; ok && a.reg.byID(w.ID) == nil {
			id, pinnedW = w.ID, w
		}
	}
	if id == a.nextID {
		if g, err := guardOf(spec.Cgroup); err == nil {
			if guards, err := a.objs.Guards(); err == nil {
				if gid, ok := guards[g]; ok && a.reg.byID(gid) == nil {
					id = gid
				}
			}
		}
	}
	lp, err := a.listenerFor(spec.Netns, pinnedW)
	if err != nil {
		return fmt.Errorf("protect %s: %w", spec.Name, err)
	}
	w := newWorkload(id, spec, lp)
	a.reg.add(w)
	if err := a.syncWorkload(w, true); err != nil {
		a.dropWorkload(w)
		return fmt.Errorf("protect %s: %w", spec.Name, err)
	}
	if id >= a.nextID {
		a.nextID = id + 1
	}
	if err := a.refuseExistingListeners(w); err != nil {
		a.proxy.errs.add(err)
		a.opts.Logger.WithField("workload", spec.Name).WithError(err).Warn("listeners opened before protection not refused")
	}
	a.opts.Logger.WithFields(logrus.Fields{"workload": spec.Name, "cgroup": spec.Cgroup, "netns": spec.Netns,
		"state": string(w.state), "listen4": lp.addr4.String(), "listen6": lp.addr6.String()}).Info("protecting workload")
	return nil
}

// dropWorkload removes a workload from the datapath (entry, guard, rules)
// and the registry, and releases its listener. a.mu must be held.
func (a *Agent) dropWorkload(w *workload) error {
	var errs []error
	if w.cgroupID != 0 {
		errs = append(errs, a.objs.Unprotect(w.cgroupID))
	}
	if w.guard != nil {
		errs = append(errs, a.objs.RemoveGuard(*w.guard))
	}
	errs = append(errs, a.objs.SetVerdicts(w.id, nil), a.objs.SetInbound(w.id, nil), a.objs.ForgetRefused(w.id))
	a.reg.remove(w)
	a.rules.release(w.id)
	a.releaseListener(w.listen)
	return errors.Join(errs...)
}

// Unprotect stops protecting a workload: its processes connect directly
// again. (The node agent calls it only when the configuration drops one.)
func (a *Agent) Unprotect(name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := a.reg.byName(name)
	if w == nil {
		return fmt.Errorf("unprotect %s: not protected", name)
	}
	if err := a.dropWorkload(w); err != nil {
		return fmt.Errorf("unprotect %s: %w", name, err)
	}
	return nil
}

// UnprotectStale removes from the datapath the pinned workloads and guards
// this agent was not asked to protect (a workload dropped from the
// configuration while the agent was down), and the entries of directories a
// protected workload no longer has.
//
// It also tells the agent that its workloads are all known, which starts the
// receipts of kernel refusals raised while no agent ran (an agent adopting
// pinned state reads no event before it is called).
func (a *Agent) UnprotectStale() ([]uint64, error) {
	defer a.workloadsKnown()
	a.mu.Lock()
	defer a.mu.Unlock()
	pinned, err := a.objs.Workloads()
	if err != nil {
		return nil, err
	}
	var removed []uint64
	for cg, w := range pinned {
		if rw := a.reg.byID(w.ID); rw != nil && rw.cgroupID == cg {
			continue
		}
		if err := a.objs.Unprotect(cg); err != nil {
			return removed, err
		}
		if a.reg.byID(w.ID) == nil {
			a.objs.SetVerdicts(w.ID, nil)
			a.objs.SetInbound(w.ID, nil)
			a.objs.ForgetRefused(w.ID)
		}
		removed = append(removed, cg)
	}
	guards, err := a.objs.Guards()
	if err != nil {
		return removed, err
	}
	for g, id := range guards {
		if rw := a.reg.byID(id); rw != nil && rw.guard != nil && *rw.guard == g {
			continue
		}
		if err := a.objs.RemoveGuard(g); err != nil {
			return removed, err
		}
		if a.reg.byID(id) == nil {
			// A workload whose cgroup went while an agent ran (only its
			// guard was left) and that was dropped while none ran: its
			// rules go with the guard, or they stay in the maps forever.
			a.objs.SetVerdicts(id, nil)
			a.objs.SetInbound(id, nil)
			a.objs.ForgetRefused(id)
		}
	}
	return removed, nil
}

// verdictRules is what the kernel's verdict map holds for a workload: its
// exemptions, then the policy's blocked IP literals, which are refused at
// connect() without waiting for the proxy. A blocked address that is also
// exempt stays blocked: the later rule wins and the policy fails closed.
func (a *Agent) verdictRules(w *workload, pol *hushspec.Policy) []bpf.VerdictRule {
	rules := append([]bpf.VerdictRule(nil), w.exempt...)
	return append(rules, a.rules.rulesOf(w.id, pol)...)
}

// syncDatapath writes a workload's verdict rules, then its workloads-map
// entry (which starts redirecting its connections).
func (a *Agent) syncDatapath(w *workload, pol *hushspec.Policy) error {
	if err := a.objs.SetVerdicts(w.id, a.verdictRules(w, pol)); err != nil {
		return err
	}
	// The ports it may receive on, before its cgroup is protected.
	if err := a.objs.SetInbound(w.id, w.inbound); err != nil {
		return err
	}
	return a.objs.Protect(w.cgroupID, w.listen.datapath(w.id))
}

// SetPolicy replaces the policy for every later decision, and the kernel's
// static refusals that come from it.
func (a *Agent) SetPolicy(p *hushspec.Policy, source string) {
	a.mu.Lock()
	a.polSource, a.polLoaded = source, time.Now()
	a.mu.Unlock()
	a.setPolicyOf(a.kern, p)
	a.opts.Logger.WithFields(logrus.Fields{"policy": p.Name(), "hash": p.Hash()}).Info("policy loaded")
}

// setPolicyOf replaces the policy of one kernel (the agent's, or one of
// kubernetes.policies) and the static refusals of the workloads it decides;
// the others are left alone.
func (a *Agent) setPolicyOf(k *kernel.Kernel, p *hushspec.Policy) {
	if p == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	k.SetPolicy(p)
	for _, w := range a.reg.all() {
		if w.decider(a.kern) != k {
			continue
		}
		// SetVerdicts keeps the workload's entry flagged as it should be.
		if err := a.objs.SetVerdicts(w.id, a.verdictRules(w, p)); err != nil {
			a.proxy.errs.add(fmt.Errorf("update static verdicts of %s: %w", w.name, err))
		}
	}
}

// workloadsKnown lets readEvents start (once).
func (a *Agent) workloadsKnown() { a.knownOnce.Do(func() { close(a.known) }) }

// Policy returns the policy in force.
func (a *Agent) Policy() *hushspec.Policy { return a.kern.Snapshot().Policy() }

// Close stops the listeners, waits for in-flight connections, and releases
// the programs (once; later calls return the first result). Pinned links and maps stay: protected workloads keep failing
// closed until an agent adopts them again or `uninstall` removes them.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() { a.closeErr = a.close() })
	return a.closeErr
}

func (a *Agent) close() error {
	a.mu.Lock()
	for _, lp := range a.listeners {
		lp.close()
	}
	a.listeners = map[string]*listenerPair{}
	a.mu.Unlock()
	a.cancel()
	// Every refusal reported so far gets its receipt: the events in the
	// ring are read (readEvents stops once it has them all), then what the
	// kernel still holds pending is taken.
	flushErr := a.events.Flush()
	a.bg.Wait()
	a.proxy.overflow.flush(a.ctx, a.proxy) // refusals counted while the loops stopped
	a.takePending(true)
	close(a.refusalQ)
	a.refusalWG.Wait()
	a.events.Close()
	a.proxy.wg.Wait()
	if flushErr != nil {
		flushErr = fmt.Errorf("close agent: flush refusal events: %w", flushErr)
	}
	return errors.Join(flushErr, a.objs.Close())
}

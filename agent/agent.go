package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
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
	// PinDir pins programs, links and maps so that they outlive the agent
	// (fail-closed while it is down; adopted when it restarts). Empty: no
	// pinning, everything goes away with Close (as `exec` wants).
	PinDir string
	// AttachCgroup is the cgroup the programs attach to; it must contain
	// every workload. Default: the cgroup2 root.
	AttachCgroup string
	// ListenPort is the proxy's port on 127.0.0.1 and ::1 in every network
	// namespace. 0 (default): a free port per namespace, or the port the
	// pinned state names for an adopted workload.
	ListenPort uint16
	// Resolvers are the DNS servers protected workloads may reach directly.
	Resolvers []netip.AddrPort
	// Hosts are static answers for the anti-spoofing check.
	Hosts map[string][]netip.Addr
	// Timeouts bound each connection; zero fields take their defaults.
	Timeouts Timeouts
	// AgentMark is the SO_MARK of the agent's sockets. Default
	// DefaultAgentMark. Danger: a workload able to set this mark
	// (CAP_NET_ADMIN) could bypass the proxy; protected workloads must not
	// hold CAP_NET_ADMIN.
	AgentMark uint32
	// Logger receives operational logs. Default: discarded.
	Logger logrus.FieldLogger
	// OnDecision, when set, is called after every decision (from many
	// goroutines at once).
	OnDecision func(Decision)
}

// WorkloadSpec describes a workload to protect.
type WorkloadSpec struct {
	// Name identifies the workload in receipts and status. Required.
	Name string
	// Cgroup is the workload's cgroup directory, absolute. Required.
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
}

// Agent is a running node agent: programs attached, listeners open.
type Agent struct {
	opts   Options
	objs   *bpf.Objects
	events *bpf.EventReader
	proxy  *proxy
	policy atomic.Pointer[hushspec.Policy]

	mu        sync.Mutex
	listeners map[string]*listenerPair // by netns path
	reg       *registry
	nextID    uint32
	polSource string
	polLoaded time.Time
	started   time.Time

	ctx       context.Context
	cancel    context.CancelFunc
	bg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

type listenerPair struct {
	netns  string
	ln4    *net.TCPListener
	ln6    *net.TCPListener
	addr4  netip.AddrPort
	addr6  netip.AddrPort
	refcnt int
}

// Start loads and attaches the programs (adopting pinned state when PinDir
// has it) and starts reading kernel refusal events. Protect then adds
// workloads.
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
		l.Out = ioDiscard{}
		opts.Logger = l
	}
	if opts.AgentMark == 0 {
		opts.AgentMark = DefaultAgentMark
	}
	if opts.AttachCgroup == "" {
		mnt, err := cgroupfs.Mount()
		if err != nil {
			return nil, fmt.Errorf("start agent: %w", err)
		}
		opts.AttachCgroup = mnt
	}
	if err := bpf.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	objs, err := bpf.Load(bpf.Options{AgentMark: opts.AgentMark, PinDir: opts.PinDir})
	if err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	a := &Agent{
		opts:      opts,
		objs:      objs,
		listeners: map[string]*listenerPair{},
		reg:       newRegistry(),
		nextID:    1,
		polSource: opts.PolicySource,
		polLoaded: time.Now(),
		started:   time.Now(),
	}
	a.policy.Store(opts.Policy)
	// Existing (pinned) workloads keep their ids: their in-flight originals
	// and events name them.
	if pinned, err := objs.Workloads(); err == nil {
		for _, w := range pinned {
			if w.ID >= a.nextID {
				a.nextID = w.ID + 1
			}
		}
	}
	if err := objs.SetResolvers(opts.Resolvers); err != nil {
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
		key:       opts.Key,
		policy:    &a.policy,
		workloads: a.reg,
		resolver:  newResolver(opts.Hosts),
		timeouts:  opts.Timeouts.withDefaults(),
		mark:      opts.AgentMark,
		logger:    opts.Logger,
		onDecide:  opts.OnDecision,
		counts:    &counters{},
		errs:      &errorRing{},
		now:       time.Now,

		idle: newIdleSet(opts.Timeouts.withDefaults().Idle),
	}
	a.proxy.metrics = newMetrics(a)
	a.bg.Add(2)
	go func() { defer a.bg.Done(); a.readEvents() }()
	go func() { defer a.bg.Done(); a.proxy.idle.run(a.ctx.Done()) }()
	return a, nil
}

// Protect starts protecting a workload: its namespace gets a listener, its
// exemptions go into the verdict map, then its cgroup goes into the
// workloads map. From that moment every TCP connect of its processes reaches
// the proxy, and its UDP is refused except DNS.
func (a *Agent) Protect(spec WorkloadSpec) error {
	if spec.Name == "" || spec.Cgroup == "" {
		return errors.New("protect: workload needs a name and a cgroup")
	}
	cgID, err := cgroupfs.ID(spec.Cgroup)
	if err != nil {
		return fmt.Errorf("protect %s: %w", spec.Name, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old := a.reg.byName(spec.Name); old != nil {
		return fmt.Errorf("protect %s: already protected", spec.Name)
	}
	id := a.nextID
	var pinnedW bpf.Workload
	if pinned, err := a.objs.Workloads(); err == nil {
		if w, ok := pinned[cgID]; ok {
			id, pinnedW = w.ID, w
		}
	}
	lp, err := a.listenerFor(spec.Netns, pinnedW)
	if err != nil {
		return fmt.Errorf("protect %s: %w", spec.Name, err)
	}
	w := &workload{id: id, name: spec.Name, cgroup: spec.Cgroup, cgroupID: cgID,
		netns: spec.Netns, labels: spec.Labels, exempt: spec.Exempt, listen: lp,
		ident:       workloadIdentity(spec.Name, spec.Cgroup, spec.Labels),
		egressPorts: slices.Clone(spec.EgressPorts), inbound: inboundRules(spec)}
	a.reg.add(w)
	err = a.objs.SetInbound(w.id, w.inbound) // before the cgroup is protected
	if err == nil {
		err = a.syncDatapath(w, a.policy.Load().EgressBlockedAddrs())
	}
	if err != nil {
		a.reg.remove(w)
		a.releaseListener(lp)
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
		"listen4": lp.addr4.String(), "listen6": lp.addr6.String()}).Info("protecting workload")
	return nil
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
	if err := a.objs.Unprotect(w.cgroupID); err != nil {
		return err
	}
	if err := a.objs.SetVerdicts(w.id, nil); err != nil {
		return err
	}
	if err := a.objs.SetInbound(w.id, nil); err != nil {
		return err
	}
	if err := a.objs.ForgetRefused(w.id); err != nil {
		return err
	}
	a.reg.remove(w)
	a.releaseListener(w.listen)
	return nil
}

// UnprotectStale removes from the datapath the pinned workloads this agent
// was not asked to protect (a workload dropped from the configuration while
// the agent was down).
func (a *Agent) UnprotectStale() ([]uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	pinned, err := a.objs.Workloads()
	if err != nil {
		return nil, err
	}
	var removed []uint64
	for cg, w := range pinned {
		if a.reg.byID(w.ID) != nil {
			continue
		}
		if err := a.objs.Unprotect(cg); err != nil {
			return removed, err
		}
		a.objs.SetVerdicts(w.ID, nil)
		a.objs.SetInbound(w.ID, nil)
		a.objs.ForgetRefused(w.ID)
		removed = append(removed, cg)
	}
	return removed, nil
}

// staticRuleBase numbers the verdict rules made from the policy's blocked
// addresses (rule id = base + index), apart from exemptions (id 0).
const staticRuleBase = 1

// verdictRules is what the kernel's verdict map holds for a workload: its
// exemptions, then the policy's blocked IP literals, which are refused at
// connect() without waiting for the proxy. A blocked address that is also
// exempt stays blocked: the later rule wins and the policy fails closed.
func (a *Agent) verdictRules(w *workload, blocked []hushspec.BlockedAddr) []bpf.VerdictRule {
	rules := append([]bpf.VerdictRule(nil), w.exempt...)
	for i, b := range blocked {
		rules = append(rules, bpf.VerdictRule{
			Prefix: netip.PrefixFrom(b.Addr, b.Addr.BitLen()), Proto: bpf.ProtoTCP,
			Verdict: bpf.VerdictDeny, RuleID: uint32(staticRuleBase + i),
		})
	}
	return rules
}

// syncDatapath writes a workload's verdict rules, then its workloads-map
// entry (which starts redirecting its connections).
func (a *Agent) syncDatapath(w *workload, blocked []hushspec.BlockedAddr) error {
	if err := a.objs.SetVerdicts(w.id, a.verdictRules(w, blocked)); err != nil {
		return err
	}
	return a.objs.Protect(w.cgroupID, bpf.Workload{ID: w.id, Listen4: w.listen.addr4, Listen6: w.listen.addr6})
}

// listenerFor returns the listener pair of a network namespace, opening it
// when it is the first workload there. A pinned workload's address is
// reused, so a restarted agent listens where the datapath already points.
func (a *Agent) listenerFor(netnsPath string, pinned bpf.Workload) (*listenerPair, error) {
	if lp, ok := a.listeners[netnsPath]; ok {
		lp.refcnt++
		return lp, nil
	}
	port4, port6 := a.opts.ListenPort, a.opts.ListenPort
	if pinned.Listen4.IsValid() {
		port4 = pinned.Listen4.Port()
	}
	if pinned.Listen6.IsValid() {
		port6 = pinned.Listen6.Port()
	}
	lp := &listenerPair{netns: netnsPath, refcnt: 1}
	err := inNetns(netnsPath, func() error {
		ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port4)})
		if err != nil {
			return fmt.Errorf("listen on 127.0.0.1:%d: %w", port4, err)
		}
		lp.ln4 = ln
		lp.addr4 = ln.Addr().(*net.TCPAddr).AddrPort()
		if port6 == 0 && a.opts.ListenPort == 0 {
			port6 = lp.addr4.Port() // one port for both families when free
		}
		ln6, err := net.ListenTCP("tcp6", &net.TCPAddr{IP: net.IPv6loopback, Port: int(port6)})
		if err != nil && port6 != 0 && !pinned.Listen6.IsValid() {
			ln6, err = net.ListenTCP("tcp6", &net.TCPAddr{IP: net.IPv6loopback})
		}
		if err != nil {
			// No IPv6 loopback in this namespace: IPv6 connects are then
			// refused by the programs (no listener), never passed.
			a.opts.Logger.WithField("netns", netnsPath).WithError(err).Warn("no IPv6 listener")
			return nil
		}
		lp.ln6 = ln6
		lp.addr6 = ln6.Addr().(*net.TCPAddr).AddrPort()
		return nil
	})
	if err != nil {
		if lp.ln4 != nil {
			lp.ln4.Close()
		}
		return nil, err
	}
	for _, ln := range []*net.TCPListener{lp.ln4, lp.ln6} {
		if ln == nil {
			continue
		}
		a.bg.Add(1)
		go func() { defer a.bg.Done(); a.proxy.serve(a.ctx, ln, netnsPath) }()
	}
	a.listeners[netnsPath] = lp
	return lp, nil
}

func (a *Agent) releaseListener(lp *listenerPair) {
	lp.refcnt--
	if lp.refcnt > 0 {
		return
	}
	lp.ln4.Close()
	if lp.ln6 != nil {
		lp.ln6.Close()
	}
	delete(a.listeners, lp.netns)
}

// SetPolicy replaces the policy for every later decision, and the kernel's
// static refusals that come from it.
func (a *Agent) SetPolicy(p *hushspec.Policy, source string) {
	a.mu.Lock()
	a.policy.Store(p)
	a.polSource, a.polLoaded = source, time.Now()
	blocked := p.EgressBlockedAddrs()
	for _, w := range a.reg.all() {
		// SetVerdicts keeps the workload's entry flagged as it should be.
		if err := a.objs.SetVerdicts(w.id, a.verdictRules(w, blocked)); err != nil {
			a.proxy.errs.add(fmt.Errorf("update static verdicts of %s: %w", w.name, err))
		}
	}
	a.mu.Unlock()
	a.opts.Logger.WithFields(logrus.Fields{"policy": p.Name(), "hash": p.Hash()}).Info("policy loaded")
}

// Policy returns the policy in force.
func (a *Agent) Policy() *hushspec.Policy { return a.policy.Load() }

// readEvents turns kernel refusals into receipts.
func (a *Agent) readEvents() {
	for {
		e, err := a.events.Read()
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			a.proxy.errs.add(err)
			continue
		}
		a.kernelRefusal(e)
	}
}

func (a *Agent) kernelRefusal(e bpf.Event) {
	w := a.reg.byID(e.WorkloadID)
	if w == nil {
		a.proxy.errs.add(fmt.Errorf("kernel refusal from unknown workload id %d", e.WorkloadID))
		return
	}
	if e.Kind == bpf.EventInboundRefused {
		a.inboundRefusal(e, w)
		return
	}
	transport := kernel.TransportTCP
	if e.Proto == bpf.ProtoUDP {
		transport = kernel.TransportUDP
	}
	var reason string
	switch e.Kind {
	case bpf.EventUDPRefused:
		reason = "UDP is refused for protected workloads except DNS to the configured resolvers (QUIC would bypass the TCP path)"
	case bpf.EventTCPDenied:
		reason = "host matched a block pattern; refused at connect() in the kernel"
	case bpf.EventNoRecord:
		reason = "the datapath could not record the original destination; connect refused"
	default:
		reason = "refused in the kernel: " + e.Kind.String()
	}
	if e.Count > 1 {
		reason += fmt.Sprintf(" (%d refusals of this destination aggregated into this receipt)", e.Count)
	}
	ev := kernel.EgressEvent{
		IP: e.Dst.Addr(), Port: e.Dst.Port(), Transport: transport,
		Workload:     w.identity(),
		Process:      kernel.ProcessIdentity{PID: e.PID, UID: e.UID, Comm: e.Comm},
		ConnectionID: newConnectionID(),
	}
	out := kernel.Outcome{Verdict: kernel.VerdictDeny, Guard: GuardDatapath, Reason: reason}
	if e.Kind == bpf.EventTCPDenied {
		// The policy's own block rule, enforced early.
		out.Guard, out.PolicyDecision, out.MatchedRule = kernel.GuardEgressPolicy, hushspec.DecisionDeny, "rules.egress.block"
		if blocked := a.policy.Load().EgressBlockedAddrs(); e.RuleID >= staticRuleBase && int(e.RuleID-staticRuleBase) < len(blocked) {
			out.Pattern = blocked[e.RuleID-staticRuleBase].Pattern
		}
	}
	d := Decision{Time: time.Now(), Workload: w.name, PID: e.PID, Comm: e.Comm, Dst: e.Dst,
		Transport: transport, Verdict: kernel.VerdictDeny, Guard: out.Guard, MatchedRule: out.MatchedRule, Reason: reason, Count: e.Count}
	a.proxy.record(a.ctx, ev, out, &d, nil)
	a.proxy.counts.denied.Add(uint64(max(e.Count, 1)))
	a.proxy.report(d)
}

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
		lp.ln4.Close()
		if lp.ln6 != nil {
			lp.ln6.Close()
		}
	}
	a.listeners = map[string]*listenerPair{}
	a.mu.Unlock()
	a.cancel()
	a.events.Close()
	a.bg.Wait()
	a.proxy.wg.Wait()
	return a.objs.Close()
}

// workload is a protected workload as the proxy knows it.
type workload struct {
	id       uint32
	name     string
	cgroup   string
	cgroupID uint64
	netns    string
	labels   map[string]string
	exempt   []bpf.VerdictRule
	listen   *listenerPair
	ident    kernel.WorkloadIdentity // as receipts name it, computed once
	// egressPorts are the destination ports the proxy allows; empty: all.
	egressPorts []uint16
	// inbound are the local ports the workload may bind and listen on.
	inbound []bpf.InboundRule
}

func (w *workload) identity() kernel.WorkloadIdentity { return w.ident }

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

type ioDiscard struct{}

func (ioDiscard) Write(p []byte) (int, error) { return len(p), nil }

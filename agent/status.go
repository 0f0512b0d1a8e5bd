package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/backbay-labs/chio-agent/internal/dnsproxy"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/ship"
)

// DefaultStatusSocket is where `chio-agent run` serves its status.
const DefaultStatusSocket = "/run/chio-agent/status.sock"

// Status is what `chio-agent status` shows.
type Status struct {
	Version     string             `json:"version"`
	PID         int                `json:"pid"`
	StartedAt   time.Time          `json:"started_at"`
	PinDir      string             `json:"pin_dir,omitempty"`
	Attachments []AttachmentStatus `json:"attachments"`
	Workloads   []WorkloadStatus   `json:"workloads"`
	// Pods are the pods pod discovery found (kernel.yaml's kubernetes:),
	// protected or not; absent without it.
	Pods []PodStatus `json:"pods,omitempty"`
	// PodPolicies are kubernetes.policies as loaded; absent without pod
	// discovery.
	PodPolicies []PodPolicyStatus `json:"pod_policies,omitempty"`
	// Birth lists the birth roots (cgroups below which an unclassified
	// cgroup is refused the network) and the exempt cgroups; absent when
	// there are none.
	Birth     *BirthStatus     `json:"birth,omitempty"`
	Listeners []ListenerStatus `json:"listeners"`
	// DNS is nil when no DNS listeners run.
	DNS      *DNSStatus     `json:"dns,omitempty"`
	Counts   CountStatus    `json:"counts"`
	Refusals RefusalStatus  `json:"kernel_refusals"`
	Maps     MapStatus      `json:"maps"`
	Receipts ReceiptStatus  `json:"receipts"`
	Policy   PolicyStatus   `json:"policy"`
	Errors   []TimedError   `json:"errors"`
	Extra    map[string]any `json:"extra,omitempty"`

	// Shipping is the NATS shipper's state: its lag in receipts and
	// seconds, its last error; absent when the sink is local.
	Shipping *ship.Status `json:"shipping,omitempty"`
}

// AttachmentStatus is one attached program.
type AttachmentStatus struct {
	Program string `json:"program"`
	Hook    string `json:"hook"`
	Cgroup  string `json:"cgroup"`
	LinkID  uint32 `json:"link_id"`
	ProgID  uint32 `json:"prog_id"`
	PinPath string `json:"pin_path,omitempty"`
	Adopted bool   `json:"adopted"`
	// HandedOver: the link was pinned by an agent of another map layout and
	// swapped to this agent's program (an upgrade).
	HandedOver bool `json:"handed_over,omitempty"`
}

// WorkloadStatus is one protected workload.
type WorkloadStatus struct {
	Name     string            `json:"name"`
	ID       uint32            `json:"id"`
	Cgroup   string            `json:"cgroup"`
	CgroupID uint64            `json:"cgroup_id"` // 0 while the cgroup does not exist
	Netns    string            `json:"netns,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Exempt   int               `json:"exempt_rules"`
	// State is protected, waiting (the cgroup does not exist; its path is
	// guarded, so whatever appears there is refused until protected) or
	// missing (its parent does not exist either).
	State WorkloadState `json:"state"`
	// EgressPorts, InboundPorts and InboundAll are the workload's
	// egress.allow_ports, inbound.allow_ports and inbound.allow_all.
	EgressPorts  []uint16 `json:"egress_allow_ports,omitempty"`
	InboundPorts []uint16 `json:"inbound_allow_ports,omitempty"`
	InboundAll   bool     `json:"inbound_allow_all,omitempty"`
	// RefuseAll is why every connection is refused, when it is.
	RefuseAll string `json:"refuse_all,omitempty"`
	// PolicyHash is the hash of the policy deciding the workload now: its
	// pod's (kubernetes.policies), else the agent's.
	PolicyHash string `json:"policy_hash"`
	// Pod is the Kubernetes pod the workload is, for one pod discovery
	// made.
	Pod *PodStatus `json:"pod,omitempty"`
}

// ListenerStatus is one proxy listener.
type ListenerStatus struct {
	Netns string `json:"netns,omitempty"`
	Addr  string `json:"addr"`
	// Kind is "proxy" (TCP connections), "dns/udp" or "dns/tcp".
	Kind string `json:"kind"`
}

// DNSStatus is what the DNS listeners and the agent's DNS proxy did since
// start.
type DNSStatus struct {
	// Proxy says whether the agent's own proxy answers (else a handler
	// given by the embedding program, or none: no DNS listeners).
	Proxy bool `json:"proxy"`
	// Answered and Refused count the proxy's queries (a flood's every
	// query); Unreceipted those of no known workload.
	Answered    uint64 `json:"answered"`
	Refused     uint64 `json:"refused"`
	Unreceipted uint64 `json:"unreceipted"`
	// OverBound are datagrams and connections turned away by a workload's
	// in-flight bound; Unattributed those the kernel had no record of.
	OverBound    uint64 `json:"over_bound"`
	Unattributed uint64 `json:"unattributed"`
}

// CountStatus are the decision totals since start.
type CountStatus struct {
	Allowed       uint64 `json:"allowed"`
	Denied        uint64 `json:"denied"`
	Failed        uint64 `json:"failed"`
	ReceiptErrors uint64 `json:"receipt_errors"`
}

// MapStatus are the connection-tracking map sizes; both near zero on a
// healthy agent.
type MapStatus struct {
	// PendingOriginals are connects between connect() and the handshake.
	PendingOriginals int `json:"pending_originals"`
	// EstablishedOriginals are connections waiting for the proxy.
	EstablishedOriginals int `json:"established_originals"`
	// RefusalKeys are the destinations refused in about the last second or
	// with refusals pending (the refusals map holds 65536).
	RefusalKeys int `json:"refusal_keys"`
	// Workloads and Guards are the entries of the workloads and guards
	// maps: one each per protected workload whose cgroup (or its parent)
	// exists; back to their count before a pod once it is deleted.
	Workloads int `json:"workload_entries"`
	Guards    int `json:"guard_entries"`
}

// ReceiptStatus is the receipt log's head.
type ReceiptStatus struct {
	Path           string `json:"path"`
	KernelKey      string `json:"kernel_key"`
	LastSeq        uint64 `json:"last_seq"`
	Checkpoints    uint64 `json:"checkpoints"`
	SealedSeq      uint64 `json:"sealed_seq"`
	LastCheckpoint string `json:"last_checkpoint_root,omitempty"`
}

// PolicyStatus is the policy in force.
type PolicyStatus struct {
	Name     string    `json:"name"`
	Hash     string    `json:"hash"`
	Source   string    `json:"source"`
	LoadedAt time.Time `json:"loaded_at"`
}

// Status reports the agent's state.
func (a *Agent) Status(version string) Status {
	s := Status{Version: version, PID: os.Getpid(), StartedAt: a.started, PinDir: a.opts.PinDir,
		Attachments: []AttachmentStatus{}, Workloads: []WorkloadStatus{}, Listeners: []ListenerStatus{}}
	for _, at := range a.objs.Attachments() {
		as := AttachmentStatus{Program: at.Name, Hook: at.Hook, Cgroup: at.Cgroup, PinPath: at.PinPath, Adopted: at.Adopted, HandedOver: at.HandedOver}
		as.LinkID, as.ProgID, _ = at.IDs()
		s.Attachments = append(s.Attachments, as)
	}
	a.mu.Lock()
	for _, w := range a.reg.all() {
		ws := WorkloadStatus{Name: w.name, ID: w.id, Cgroup: w.cgroup,
			CgroupID: w.cgroupID, State: w.state, Netns: w.netns, Labels: w.labels, Exempt: len(w.exempt)}
		ws.EgressPorts = w.egressPorts
		ws.InboundPorts, ws.InboundAll = w.inboundPorts()
		ws.RefuseAll = w.refuseAll
		ws.PolicyHash = w.decider(a.kern).PolicyHash()
		s.Workloads = append(s.Workloads, ws)
	}
	for _, lp := range a.listeners {
		add := func(kind string, ap netip.AddrPort) {
			if ap.IsValid() && ap.Port() != 0 {
				s.Listeners = append(s.Listeners, ListenerStatus{Netns: lp.netns, Addr: ap.String(), Kind: kind})
			}
		}
		add("proxy", lp.addr4)
		add("proxy", lp.addr6)
		if d := lp.dns; d != nil {
			for _, kind := range []string{"dns/udp", "dns/tcp"} {
				add(kind, netip.AddrPortFrom(lp.addr4.Addr(), d.port4))
				add(kind, netip.AddrPortFrom(lp.addr6.Addr(), d.port6))
			}
		}
	}
	if a.dns != nil {
		ds := &DNSStatus{OverBound: a.dns.overBound.Load(), Unattributed: a.dns.unattributed.Load()}
		if p, ok := a.opts.DNS.(*dnsproxy.Proxy); ok {
			st := p.Stats()
			ds.Proxy, ds.Answered, ds.Refused, ds.Unreceipted = true, st.Answered, st.Refused, st.Unreceipted
		}
		s.DNS = ds
	}
	p := a.kern.Snapshot().Policy()
	s.Policy = PolicyStatus{Name: p.Name(), Hash: p.Hash(), Source: a.polSource, LoadedAt: a.polLoaded}
	kc := a.kube
	a.mu.Unlock()
	if kc != nil {
		s.Pods = kc.status() // not under a.mu: pod discovery takes its lock, then a.mu
		s.PodPolicies = kc.policyStatus()
		byName := map[string]int{}
		for i, ws := range s.Workloads {
			byName[ws.Name] = i
		}
		for i := range s.Pods {
			pod := &s.Pods[i]
			if j, ok := byName[pod.Workload]; ok && pod.Workload != "" {
				pod.State = string(s.Workloads[j].State)
				pod.PolicyHash = s.Workloads[j].PolicyHash
				cp := *pod
				s.Workloads[j].Pod = &cp
			}
		}
	}
	if b, err := a.Birth(); err != nil {
		a.proxy.errs.add(err)
	} else if len(b.Roots) > 0 || len(b.Exempt) > 0 {
		s.Birth = &b
	}
	c := a.proxy.counts
	s.Counts = CountStatus{Allowed: c.allowed.Load(), Denied: c.denied.Load(), Failed: c.failed.Load(), ReceiptErrors: c.receiptErrors.Load()}
	var err error
	if s.Refusals, err = a.Refusals(); err != nil {
		a.proxy.errs.add(err)
	}
	s.Maps.PendingOriginals, s.Maps.EstablishedOriginals, _ = a.objs.MapCounts()
	s.Maps.RefusalKeys, _ = a.objs.RefusalKeys()
	if ws, err := a.objs.Workloads(); err == nil {
		s.Maps.Workloads = len(ws)
	}
	if gs, err := a.objs.Guards(); err == nil {
		s.Maps.Guards = len(gs)
	}
	s.Receipts = receiptStatus(a.opts.Log)
	if a.opts.Shipper != nil {
		st := a.opts.Shipper.Status()
		s.Shipping = &st
	}
	s.Errors = a.proxy.errs.list()
	if s.Errors == nil {
		s.Errors = []TimedError{}
	}
	return s
}

func receiptStatus(l *receipts.Log) ReceiptStatus {
	rs := ReceiptStatus{Path: l.Path(), KernelKey: l.KernelKey(), LastSeq: l.LastSeq()}
	if st, err := l.Stats(); err == nil {
		rs.Checkpoints, rs.SealedSeq = st.Checkpoints, st.SealedSeq
		if st.Checkpoints > 0 {
			if cp, err := l.Checkpoint(st.Checkpoints); err == nil {
				rs.LastCheckpoint = cp.Body.MerkleRoot
			}
		}
	}
	return rs
}

// ServeStatus serves, on a unix socket that only root can reach (the
// directory is 0700 and the socket 0600), until ctx ends:
//
//	GET /status               the agent's Status as JSON
//	GET /receipts?after=N     receipts after seq N as JSON lines (limit=M bounds them)
//	GET /receipts/snapshot    a consistent copy of the receipt log file
//	GET /metrics              Prometheus metrics
//
// The receipt endpoints let `chio-agent receipts …` read a log the running
// agent holds (bbolt lets no other process open it meanwhile).
//
// reload, when not nil, is offered as POST /reload (`chio-agent reload`): it
// reloads what SIGHUP reloads and answers with what was refused.
func ServeStatus(ctx context.Context, path string, status func() Status, log *receipts.Log, metrics http.Handler, reload func(context.Context) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	if err := os.Chmod(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	// A stale socket from a killed agent is in the way; a live one is not
	// ours to take.
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return fmt.Errorf("status socket %s: another agent is serving it", path)
	}
	os.Remove(path)
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(status())
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	if reload != nil {
		mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
			if err := reload(r.Context()); err != nil {
				http.Error(w, err.Error(), http.StatusConflict)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		})
	}
	mux.HandleFunc("GET /receipts/snapshot", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		log.Snapshot(w) // a failure cuts the stream short; the reader's open fails
	})
	mux.HandleFunc("GET /receipts", func(w http.ResponseWriter, r *http.Request) {
		var f receipts.Filter
		var err error
		if v := r.URL.Query().Get("after"); v != "" {
			if f.AfterSeq, err = strconv.ParseUint(v, 10, 64); err != nil {
				http.Error(w, "after: not a sequence number", http.StatusBadRequest)
				return
			}
		}
		f.Limit = 10000
		if v := r.URL.Query().Get("limit"); v != "" {
			if f.Limit, err = strconv.Atoi(v); err != nil || f.Limit <= 0 || f.Limit > 10000 {
				http.Error(w, "limit: want 1 to 10000", http.StatusBadRequest)
				return
			}
		}
		w.Header().Set("Content-Type", "application/jsonl")
		enc := json.NewEncoder(w)
		log.Scan(r.Context(), f, func(e receipts.Entry) error { return enc.Encode(e) })
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); srv.Close() }()
	err = srv.Serve(ln)
	os.Remove(path)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// get asks the agent serving the socket at path for one resource.
func get(ctx context.Context, path, resource string, timeout time.Duration) (*http.Response, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w (no status socket at %s)", ErrNotRunning, path)
	}
	cl := unixClient(path, timeout)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+resource, nil)
	resp, err := cl.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w (status socket %s: %v)", ErrNotRunning, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("agent answered %s for %s", resp.Status, resource)
	}
	return resp, nil
}

// RequestReload asks the running agent to reload its policies and workloads,
// as SIGHUP does, and returns what it refused (the old stays in force for
// what was refused).
func RequestReload(ctx context.Context, socket string) error {
	if _, err := os.Stat(socket); err != nil {
		return fmt.Errorf("%w (no status socket at %s)", ErrNotRunning, socket)
	}
	cl := unixClient(socket, 2*time.Minute)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/reload", nil)
	resp, err := cl.Do(req)
	if err != nil {
		return fmt.Errorf("%w (status socket %s: %v)", ErrNotRunning, socket, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent:
		return nil
	case http.StatusConflict:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return fmt.Errorf("reload refused, the old stays in force: %s", strings.TrimSpace(string(msg)))
	default:
		return fmt.Errorf("agent answered %s for /reload (an agent older than the reload command?)", resp.Status)
	}
}

// unixClient is an HTTP client for the status socket.
func unixClient(path string, timeout time.Duration) *http.Client {
	// No keep-alive: the transport is dropped after one request, and an idle
	// connection would hold a goroutine and a socket on both sides forever.
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}, Timeout: timeout}
}

// FetchSnapshot copies the running agent's receipt log into w.
func FetchSnapshot(ctx context.Context, socket string, w io.Writer) error {
	resp, err := get(ctx, socket, "/receipts/snapshot", 0)
	if err != nil {
		return fmt.Errorf("snapshot receipt log: %w", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("snapshot receipt log: %w", err)
	}
	return nil
}

// FetchReceipts returns up to limit receipts after seq from the running
// agent's log.
func FetchReceipts(ctx context.Context, socket string, after uint64, limit int) ([]receipts.Entry, error) {
	resp, err := get(ctx, socket, fmt.Sprintf("/receipts?after=%d&limit=%d", after, limit), 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("fetch receipts: %w", err)
	}
	defer resp.Body.Close()
	var out []receipts.Entry
	dec := json.NewDecoder(resp.Body)
	for {
		var e receipts.Entry
		if err := dec.Decode(&e); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return out, fmt.Errorf("fetch receipts: %w", err)
		}
		out = append(out, e)
	}
}

// QueryStatus asks the agent serving the socket at path for its status.
func QueryStatus(ctx context.Context, path string) (Status, error) {
	resp, err := get(ctx, path, "/status", 5*time.Second)
	if err != nil {
		return Status{}, err
	}
	defer resp.Body.Close()
	var s Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return Status{}, fmt.Errorf("status: decode: %w", err)
	}
	return s, nil
}

package kernel

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// How an egress connection is named in a receipt (docs/receipts.md).
const (
	// EgressToolServer is the receipt's tool_server: the "server" that
	// performs the action is the node agent's egress path, not a tool
	// server of the agent's choosing.
	EgressToolServer = "chio-agent/egress"
	// EgressToolName is the receipt's tool_name: the system call every
	// mediated connection starts from, whatever the transport.
	EgressToolName = "connect"
	// EgressSocketToolName is the tool_name of a refused socket(2): the
	// datapath refuses, at creation, sockets it cannot mediate (ICMP, raw).
	EgressSocketToolName = "socket"
	// GuardEgressPolicy names the HushSpec egress rules as a guard in
	// decisions and evidence, in Chio's CamelCase guard style.
	GuardEgressPolicy = "HushSpecEgressGuard"
	// EgressMetadataSchema versions the layout of parameters and metadata
	// below, so readers can tell egress receipts apart and evolve with them.
	EgressMetadataSchema = "chio-agent.egress.v1"
)

// Directions of an event: an outbound connection (the default, left out of
// receipts) or a refused attempt to receive.
const (
	DirectionOutbound = "outbound"
	DirectionInbound  = "inbound"
)

// Transports an egress event may use. The datapath mediates TCP and UDP;
// the other protocols appear only in receipts of refusals.
const (
	TransportTCP    = "tcp"
	TransportUDP    = "udp"
	TransportICMP   = "icmp"
	TransportICMPv6 = "icmpv6"
)

// TransportOf names an IP protocol number as a receipt's transport: tcp,
// udp, icmp, icmpv6, sctp, udplite, mptcp, else "ip-N".
func TransportOf(protocol uint16) string {
	switch protocol {
	case 6:
		return TransportTCP
	case 17:
		return TransportUDP
	case 1:
		return TransportICMP
	case 58:
		return TransportICMPv6
	case 132:
		return "sctp"
	case 136:
		return "udplite"
	case 262:
		return "mptcp"
	}
	return "ip-" + strconv.Itoa(int(protocol))
}

// validTransport says whether s is a name TransportOf gives.
func validTransport(s string) bool {
	if n, ok := strings.CutPrefix(s, "ip-"); ok {
		v, err := strconv.ParseUint(n, 10, 16)
		return err == nil && strconv.FormatUint(v, 10) == n && TransportOf(uint16(v)) == s
	}
	switch s {
	case TransportTCP, TransportUDP, TransportICMP, TransportICMPv6, "sctp", "udplite", "mptcp":
		return true
	}
	return false
}

// SocketCall is a socket(2) call refused before it named any destination.
type SocketCall struct {
	Family   string // "inet" or "inet6"
	Type     string // "stream", "dgram", "raw", "seqpacket", else "type-N"
	Protocol uint16 // IP protocol number, as the kernel resolved it
}

func (s *SocketCall) String() string {
	return fmt.Sprintf("socket(%s, %s, %s)", s.Family, s.Type, TransportOf(s.Protocol))
}

func (s *SocketCall) validate() error {
	if s.Family != "inet" && s.Family != "inet6" {
		return fmt.Errorf("%w: socket family %q is neither inet nor inet6", ErrInvalidEvent, s.Family)
	}
	switch s.Type {
	case "stream", "dgram", "raw", "seqpacket", "rdm":
	default:
		n, ok := strings.CutPrefix(s.Type, "type-")
		if _, err := strconv.ParseUint(n, 10, 32); !ok || err != nil {
			return fmt.Errorf("%w: socket type %q", ErrInvalidEvent, s.Type)
		}
	}
	return nil
}

// EgressEvent is one outbound connection as the node agent saw it: where it
// went, what the first bytes said about it, and who made it. Fields that
// were not seen are left zero and are then left out of the receipt.
type EgressEvent struct {
	// Host is the destination name as the workload asked for it, when the
	// agent knows one beyond the protocol peek (from a DNS answer it
	// served, or the HTTP CONNECT line). Empty when only an address is known.
	Host string
	// IP is the original destination address recovered from the datapath.
	// Required, except for a refused socket call (Socket).
	IP netip.Addr
	// Port is the original destination port: 0 when the workload asked for
	// port 0 (which the datapath refuses) or the protocol has no ports.
	Port uint16
	// Transport is TransportTCP or TransportUDP, or for a refusal another
	// protocol as TransportOf names it. Required.
	Transport string
	// Socket, when set, says that what was refused is the creation of a
	// socket the datapath does not mediate (ICMP, raw...): no destination
	// was named, IP and Port are left zero, and the receipt's tool_name is
	// EgressSocketToolName.
	Socket *SocketCall
	// Attempts is how many refused attempts an aggregated kernel refusal
	// stands for; 0 means one, as for every mediated connection.
	Attempts uint32
	// SNI is the server_name of a TLS ClientHello, when one was peeked.
	SNI string
	// ALPN lists the protocols the ClientHello offered, in its order.
	ALPN []string
	// ECH says the ClientHello offered Encrypted Client Hello: SNI is then
	// only the outer (public) name, and the name the client really wants
	// is encrypted. (A GREASE extension looks the same on the wire.)
	ECH bool
	// HTTPHost is the Host header of an HTTP/1.x request, when one was peeked.
	HTTPHost string
	// HTTPMethod and HTTPPath come from the HTTP/1.x request line. Only the
	// path is recorded: a query string is cut off before it reaches a
	// receipt, since it often carries credentials and receipts are kept.
	HTTPMethod string
	HTTPPath   string
	// Workload is who the connection belongs to.
	Workload WorkloadIdentity
	// Process is the task that called connect(), when the datapath named it.
	Process ProcessIdentity
	// Direction is DirectionInbound for an attempt of the workload to
	// receive (a bind() to a fixed port, a listen()): IP and Port are then
	// its local address and port, Syscall names the call, and parameters
	// carry "direction":"inbound". Empty or DirectionOutbound: a connection
	// the workload made.
	Direction string
	// Syscall is the receipt's tool_name when set (e.g. "bind", "listen").
	// Default EgressToolName.
	Syscall string
	// ConnectionID is the agent's unique id for this connection (or this
	// aggregated kernel refusal). Two connections of one process to one
	// destination within a second are otherwise identical, and so would be
	// their receipt ids; it also correlates a receipt with the agent's logs.
	ConnectionID string
	// DNS, when set, says the event is a DNS query the agent's DNS proxy
	// decided: IP and Port are the resolver the workload addressed, the
	// receipt's tool_name is DNSToolName and its target the QNAME.
	DNS *DNSQuery
}

// WorkloadIdentity names a protected workload.
type WorkloadIdentity struct {
	// Name is the workload's name (e.g. namespace/pod). Required.
	Name string
	// CgroupPath is the workload's cgroup v2 path relative to the cgroup2
	// mount (e.g. /kubepods.slice/...).
	CgroupPath string
	// Labels are identity labels (Kubernetes labels, unit names...).
	Labels map[string]string
}

// ProcessIdentity names the process that connected. PID 0 means unknown,
// and then none of the fields are recorded.
type ProcessIdentity struct {
	PID  uint32 // thread group id, as the host's pid namespace sees it
	UID  uint32 // the task's uid in the initial user namespace
	Comm string // the kernel's 16-byte task name
}

// Target is what the policy is evaluated against: the name the client
// itself put on the wire (TLS SNI, then HTTP Host), else the name asked for,
// else the address. SNI and Host are chosen by the client and prove nothing
// about the address dialled; the receipt records both so a reader can see a
// mismatch (domain fronting), and callers that care compare them.
func (e *EgressEvent) Target() string {
	switch {
	case e.SNI != "":
		return e.SNI
	case e.HTTPHost != "":
		return e.HTTPHost
	case e.DNS != nil && e.DNS.Name != "":
		return e.DNS.Name
	case e.Host != "":
		return e.Host
	case e.Socket != nil && !e.IP.IsValid():
		return e.Socket.String()
	default:
		return e.IP.String()
	}
}

// Outcome is the kernel's decision on an action and how it was reached: the
// input from which the receipt's decision and evidence are written.
type Outcome struct {
	// Verdict is VerdictAllow or VerdictDeny: what the agent enforces.
	Verdict string
	// PolicyDecision is the policy's own decision (allow, warn or deny);
	// a warn is enforced as allow and recorded here. Optional.
	PolicyDecision string
	// Guard names what decided, e.g. GuardEgressPolicy, or the agent's
	// static verdict map. Default GuardEgressPolicy.
	Guard string
	// Reason explains the decision in words. Optional.
	Reason string
	// MatchedRule is the policy rule that decided, e.g. rules.egress.block.
	MatchedRule string
	// Pattern is the policy pattern that matched, as written. Optional.
	Pattern string
}

// BuildEgressReceipt turns one egress connection and its outcome into a
// signed mediated_decision receipt (field by field in docs/receipts.md).
// policyHash is the policy's hash as the policy engine computes it (SHA-256
// hex of its canonical JSON); at is when the decision was made.
func BuildEgressReceipt(ev EgressEvent, out Outcome, policyHash string, key ed25519.PrivateKey, at time.Time) (Receipt, error) {
	if len(key) != ed25519.PrivateKeySize {
		return Receipt{}, fmt.Errorf("build egress receipt: %w: private key is %d bytes, want %d", ErrInvalidKey, len(key), ed25519.PrivateKeySize)
	}
	p, err := PrepareEgressReceipt(ev, out, policyHash, ed25519.PublicKey(key[32:]), at)
	if err != nil {
		return Receipt{}, err
	}
	r, err := p.Sign(key)
	if err != nil {
		return Receipt{}, fmt.Errorf("build egress receipt: %w", err)
	}
	return r, nil
}

// PrepareEgressReceipt is BuildEgressReceipt up to the signature, for the
// kernel key pub: the receipt's id is final, and Prepared.Sign (or
// receipts.Log.AppendPrepared) signs it later.
func PrepareEgressReceipt(ev EgressEvent, out Outcome, policyHash string, pub ed25519.PublicKey, at time.Time) (*Prepared, error) {
	body, err := EgressReceiptBody(ev, out, policyHash, at)
	if err != nil {
		return nil, err
	}
	// EgressReceiptBody wrote parameters and metadata with jcs.Marshal:
	// canonical already, and the indexed fields are known typed.
	p, err := prepare(body, pub, true)
	if err != nil {
		return nil, fmt.Errorf("build egress receipt: %w", err)
	}
	p.index, p.indexed = Index{Workload: ev.Workload.Name, Host: ev.Target()}, true
	return p, nil
}

// EgressReceiptBody is BuildEgressReceipt without the signature, for callers
// that sign elsewhere.
func EgressReceiptBody(ev EgressEvent, out Outcome, policyHash string, at time.Time) (Receipt, error) {
	if err := ev.validate(); err != nil {
		return Receipt{}, fmt.Errorf("build egress receipt: %w", err)
	}
	if out.Verdict != VerdictAllow && out.Verdict != VerdictDeny {
		return Receipt{}, fmt.Errorf("build egress receipt: %w: verdict %q is neither allow nor deny", ErrInvalidEvent, out.Verdict)
	}
	if at.Unix() < 0 {
		return Receipt{}, fmt.Errorf("build egress receipt: %w: timestamp %v before 1970", ErrInvalidEvent, at)
	}
	guard := out.Guard
	if guard == "" {
		guard = GuardEgressPolicy
	}

	params, err := jcs.Marshal(ev.parameters())
	if err != nil {
		return Receipt{}, fmt.Errorf("build egress receipt: %w: parameters: %w", ErrInvalidEvent, err)
	}
	meta, err := jcs.Marshal(ev.metadata(out))
	if err != nil {
		return Receipt{}, fmt.Errorf("build egress receipt: %w: metadata: %w", ErrInvalidEvent, err)
	}
	tool := EgressToolName
	switch {
	case ev.Socket != nil:
		tool = EgressSocketToolName
	case ev.DNS != nil:
		tool = DNSToolName
	case ev.Syscall != "":
		tool = ev.Syscall
	}
	return Receipt{
		Timestamp:     uint64(at.Unix()),
		ToolServer:    EgressToolServer,
		ToolName:      tool,
		Action:        Action{Parameters: params},
		Decision:      &Decision{Verdict: out.Verdict, Reason: out.Reason, Guard: guard},
		ReceiptKind:   KindMediatedDecision,
		BoundaryClass: BoundaryPrevent,
		TrustLevel:    TrustMediated,
		RedactionMode: "none",
		PolicyHash:    policyHash,
		Evidence: []Evidence{{
			GuardName: guard,
			Verdict:   out.Verdict == VerdictAllow,
			Details:   out.details(ev.Target()),
		}},
		Metadata: meta,
	}, nil
}

func (e *EgressEvent) validate() error {
	if e.Socket != nil {
		if err := e.Socket.validate(); err != nil {
			return err
		}
		if e.IP.IsValid() || e.Port != 0 {
			return fmt.Errorf("%w: a refused socket call has no destination", ErrInvalidEvent)
		}
	} else if !e.IP.IsValid() {
		return fmt.Errorf("%w: no destination address", ErrInvalidEvent)
	}
	if !validTransport(e.Transport) {
		return fmt.Errorf("%w: transport %q is not an IP protocol name", ErrInvalidEvent, e.Transport)
	}
	if e.Workload.Name == "" {
		return fmt.Errorf("%w: no workload name", ErrInvalidEvent)
	}
	if e.Direction != "" && e.Direction != DirectionOutbound && e.Direction != DirectionInbound {
		return fmt.Errorf("%w: direction %q is neither outbound nor inbound", ErrInvalidEvent, e.Direction)
	}
	// Peeked bytes come from an untrusted client: refuse what would not
	// canonicalize rather than sign something a verifier reads differently.
	strs := []string{e.Syscall, e.Host, e.SNI, e.HTTPHost, e.HTTPMethod, e.HTTPPath, e.Workload.Name, e.Workload.CgroupPath, e.Process.Comm, e.ConnectionID}
	strs = append(strs, e.ALPN...)
	for k, v := range e.Workload.Labels {
		strs = append(strs, k, v)
	}
	for _, s := range strs {
		if !utf8.ValidString(s) {
			return fmt.Errorf("%w: %q is not valid utf-8", ErrInvalidEvent, s)
		}
	}
	if e.DNS != nil {
		if e.Transport != TransportUDP && e.Transport != TransportTCP {
			return fmt.Errorf("%w: a dns query over %q", ErrInvalidEvent, e.Transport)
		}
		return e.DNS.validate()
	}
	return nil
}

// parameters is what was attempted: the destination and what the client
// said about it. Same destination, same parameter_hash.
func (e *EgressEvent) parameters() map[string]any {
	p := map[string]any{
		"transport": e.Transport,
		"target":    e.Target(),
	}
	if e.IP.IsValid() {
		ip := e.IP.Unmap() // an IPv4 destination reached over a v6 socket is still IPv4
		p["ip"] = ip.WithZone("").String()
		p["port"] = e.Port
	}
	if e.Socket != nil {
		p["socket"] = map[string]any{"family": e.Socket.Family, "type": e.Socket.Type, "protocol": e.Socket.Protocol}
	}
	putString(p, "host", e.Host)
	putString(p, "sni", e.SNI)
	putString(p, "http_host", e.HTTPHost)
	putString(p, "http_method", e.HTTPMethod)
	if e.HTTPPath != "" {
		path, _, _ := strings.Cut(e.HTTPPath, "?")
		path, _, _ = strings.Cut(path, "#")
		p["http_path"] = path
	}
	if len(e.ALPN) > 0 {
		p["alpn"] = e.ALPN
	}
	if e.ECH {
		p["tls_ech"] = true
	}
	if e.Direction == DirectionInbound {
		p["direction"] = DirectionInbound
	}
	if e.DNS != nil {
		e.DNS.parameters(p)
	}
	return p
}

// metadata is who acted and how the policy reached its decision.
func (e *EgressEvent) metadata(out Outcome) map[string]any {
	w := map[string]any{"name": e.Workload.Name}
	putString(w, "cgroup", e.Workload.CgroupPath)
	if len(e.Workload.Labels) > 0 {
		w["labels"] = e.Workload.Labels
	}
	m := map[string]any{
		"schema":   EgressMetadataSchema,
		"workload": w,
	}
	putString(m, "connection_id", e.ConnectionID)
	if e.Attempts > 1 {
		m["attempts"] = e.Attempts
	}
	if e.Process.PID != 0 {
		proc := map[string]any{"pid": e.Process.PID, "uid": e.Process.UID}
		putString(proc, "comm", e.Process.Comm)
		m["process"] = proc
	}
	putString(m, "policy_decision", out.PolicyDecision)
	putString(m, "matched_rule", out.MatchedRule)
	putString(m, "pattern", out.Pattern)
	if e.DNS != nil {
		if d := e.DNS.metadata(); len(d) > 0 {
			m["dns"] = d
		}
	}
	return m
}

func putString(m map[string]any, k, v string) {
	if v != "" {
		m[k] = v
	}
}

// details is the evidence entry's one-line account of the decision.
func (o Outcome) details(target string) string {
	var b strings.Builder
	b.WriteString(o.Verdict)
	if o.PolicyDecision != "" && o.PolicyDecision != o.Verdict {
		fmt.Fprintf(&b, " (policy: %s)", o.PolicyDecision)
	}
	fmt.Fprintf(&b, " %s", target)
	if o.MatchedRule != "" {
		fmt.Fprintf(&b, " by %s", o.MatchedRule)
	}
	if o.Pattern != "" {
		fmt.Fprintf(&b, " pattern %s", o.Pattern)
	}
	if o.Reason != "" {
		fmt.Fprintf(&b, ": %s", o.Reason)
	}
	return b.String()
}

// EgressParameters decodes the parameters of an egress receipt, for tools
// that read receipts back (the field names are those of docs/receipts.md).
type EgressParameters struct {
	Target    string `json:"target"`
	Host      string `json:"host,omitempty"`
	IP        string `json:"ip"`
	Port      uint16 `json:"port"`
	Transport string `json:"transport"`
	Direction string `json:"direction,omitempty"`
	Socket    *struct {
		Family   string `json:"family"`
		Type     string `json:"type"`
		Protocol uint16 `json:"protocol"`
	} `json:"socket,omitempty"`
	SNI        string   `json:"sni,omitempty"`
	ALPN       []string `json:"alpn,omitempty"`
	HTTPHost   string   `json:"http_host,omitempty"`
	HTTPMethod string   `json:"http_method,omitempty"`
	HTTPPath   string   `json:"http_path,omitempty"`
}

// ParseEgressParameters reads the parameters of a receipt written by
// BuildEgressReceipt.
func ParseEgressParameters(r *Receipt) (EgressParameters, error) {
	var p EgressParameters
	if r.ToolServer != EgressToolServer {
		return p, fmt.Errorf("parse egress parameters: %w: tool_server %q is not %s", ErrInvalidReceipt, r.ToolServer, EgressToolServer)
	}
	if err := json.Unmarshal(r.Action.Parameters, &p); err != nil {
		return p, fmt.Errorf("parse egress parameters: %w: %w", ErrInvalidReceipt, err)
	}
	return p, nil
}

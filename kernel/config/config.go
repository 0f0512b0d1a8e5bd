// Package config reads kernel.yaml, the one configuration file shared by the
// node agent (`chio-agent run`, `exec --config`) and the sidecar
// (`api protect`): where the policy comes from, where receipts go, which key
// signs them, and, for the node agent, which workloads to protect.
//
// The file is strict: unknown keys are errors, as are values of the wrong
// type. Before parsing, ${VAR} and ${VAR:-default} are replaced from the
// environment ($$ is a literal $); a ${VAR} that is unset is an error, so a
// missing variable cannot silently turn into an empty path. The CHIO_*
// environment contract then overrides the file where it applies, and command
// line flags override both (Resolve, the one place that rule lives). Errors
// name the line and the key (ParseError), never a Go type.
package config

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/backbay-labs/chio-agent/internal/regfile"
)

// MaxFileSize bounds kernel.yaml; anything larger is refused unread.
const MaxFileSize = 1 << 20

// Config is kernel.yaml. Every field is optional in the file; Defaults fills
// what a deployment usually leaves out.
type Config struct {
	// Version of this format. 1, the default, is the only one.
	Version int `yaml:"version"`
	// Policy is where the HushSpec policy comes from: a path, file://PATH,
	// http(s)://URL, or an object store: s3://BUCKET/KEY, gs://BUCKET/OBJECT,
	// azblob://ACCOUNT/CONTAINER/BLOB (optionally #sha256:HEX pinned).
	// Env: CHIO_POLICY_SOURCE.
	Policy string `yaml:"policy"`
	// PolicyWatchInterval is how often an object store policy's version is
	// checked (a change reloads it). Default 30s. Env:
	// CHIO_POLICY_WATCH_INTERVAL.
	PolicyWatchInterval Duration `yaml:"policy_watch_interval"`
	// PanicFile is the HushSpec panic sentinel: while it exists, every
	// decision is deny. Default: none.
	PanicFile string `yaml:"panic_file"`
	// Receipts configures the receipt log.
	Receipts Receipts `yaml:"receipts"`
	// SigningKey names the Ed25519 key file (hex seed). Env CHIO_SIGNING_KEY
	// (the hex seed itself) takes precedence over the file.
	SigningKey string `yaml:"signing_key"`
	// TrustedIssuerKeys are hex Ed25519 public keys whose capability tokens
	// are trusted. Env: CHIO_TRUSTED_ISSUER_KEY, CHIO_TRUSTED_ISSUER_KEYS.
	TrustedIssuerKeys []string `yaml:"trusted_issuer_keys"`
	// LogLevel is logrus's level name (debug, info, warn, error). Default
	// info. Env: CHIO_LOG_LEVEL.
	LogLevel string `yaml:"log_level"`
	// Agent configures the node agent; ignored by the sidecar.
	Agent Agent `yaml:"agent"`
	// Sidecar configures `api protect`; ignored by the node agent.
	Sidecar Sidecar `yaml:"sidecar"`
	// Sessions configures session journals and limits (the sidecar).
	Sessions Sessions `yaml:"sessions"`
	// Kubernetes, when present, protects the node's pods found through the
	// CRI (kubernetes.go); nil means no pod discovery.
	Kubernetes *Kubernetes `yaml:"kubernetes"`
}

// Receipts configures the receipt log.
type Receipts struct {
	// Sink is where receipts go: the bbolt file (a path or file://PATH),
	// or NATS servers (nats://host:port[,host:port...], tls:// alike) or a
	// store (dynamodb://TABLE, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX,
	// azblob://ACCOUNT/CONTAINER/PREFIX) to ship sealed batches to, beside
	// the local log. Env: CHIO_RECEIPT_SINK.
	Sink string `yaml:"sink"`
	// Path is the local bbolt log when Sink is NATS or a store (a local
	// Sink is the path itself; both given must agree). Default: the
	// shape's default log path.
	Path string `yaml:"path"`
	// NATS configures shipping when Sink is NATS (sink.go).
	NATS *NATS `yaml:"nats"`
	// Store configures shipping when Sink is a store (sink.go).
	Store *StoreSink `yaml:"store"`
	// Mode is sync (default: a decision takes effect only once its receipt
	// is durable) or async (faster; a crash can lose queued receipts, and
	// the log then says how many).
	Mode string `yaml:"mode"`
	// CheckpointEvery is the number of receipts per checkpoint. Default 100.
	CheckpointEvery int `yaml:"checkpoint_every"`
	// CheckpointIdle seals the tail after this much quiet. Default 1s.
	CheckpointIdle Duration `yaml:"checkpoint_idle"`
}

// Agent configures the node agent.
type Agent struct {
	// PinDir is where programs, links and maps are pinned. Default
	// /sys/fs/bpf/chio.
	PinDir string `yaml:"pin_dir"`
	// StatusSocket is the root-only unix socket `chio-agent status` talks
	// to. Default /run/chio-agent/status.sock.
	StatusSocket string `yaml:"status_socket"`
	// ListenPort is the port of the proxy's listener in every network
	// namespace (127.0.0.1 and ::1). 0 (default) picks a free port in the
	// host namespace and reuses it everywhere; a restarted agent reuses the
	// port its pinned state names.
	ListenPort uint16 `yaml:"listen_port"`
	// Resolvers are the DNS servers (address:port) protected workloads'
	// DNS is forwarded to by the agent's DNS proxy (dns.proxy), which alone
	// reaches them. Default: none (no DNS).
	Resolvers []string `yaml:"resolvers"`
	// DNS configures the DNS proxy (docs/dns.md).
	DNS DNS `yaml:"dns"`
	// MetricsAddr, when set, serves Prometheus metrics on this TCP address
	// (they are always on the status socket too). Default: none.
	MetricsAddr string `yaml:"metrics_addr"`
	// Hosts are static name → address answers the proxy's anti-spoofing
	// check uses before DNS (as /etc/hosts would). Default: none.
	Hosts map[string][]string `yaml:"hosts"`
	// Timeouts bound each proxied connection.
	Timeouts Timeouts `yaml:"timeouts"`
	// Limits bound what workloads can make the agent hold.
	Limits Limits `yaml:"limits"`
	// Workloads are the protected workloads.
	Workloads []Workload `yaml:"workloads"`
}

// Timeouts bound each proxied connection.
type Timeouts struct {
	// FirstBytes is how long the proxy waits for the client's first bytes
	// (TLS ClientHello, HTTP request head). Default 5s.
	FirstBytes Duration `yaml:"first_bytes"`
	// Idle closes a connection after this long with no data either way.
	// Default 5m.
	Idle Duration `yaml:"idle"`
	// Total closes a connection this long after it was accepted. Default 1h.
	Total Duration `yaml:"total"`
	// Dial bounds the upstream connect. Default 10s.
	Dial Duration `yaml:"dial"`
}

// Limits bound what protected workloads can make the node agent hold, so
// that its memory stays under a ceiling (docs/operations.md). A connection
// past a bound is refused with a receipt naming it. 0 takes the default.
// DNS configures the agent's DNS proxy (agent.dns).
type DNS struct {
	// Proxy, default true, sends every DNS message of a protected workload
	// (UDP and TCP to port 53, any address) to the agent, which decides
	// each query name by the workload's policy. Danger: false lets the
	// workloads reach Resolvers directly, with any name and any payload.
	Proxy *bool `yaml:"proxy"`
	// BlockRcode answers a name the policy refuses: nxdomain (default) or
	// refused.
	BlockRcode string `yaml:"block_rcode"`
	// RefuseOtherTypes refuses every query type beyond A, AAAA, CNAME,
	// HTTPS and SVCB. Default false: other types are answered for names the
	// policy allows.
	RefuseOtherTypes bool `yaml:"refuse_other_types"`
	// Rate and Burst are each workload's queries per second and at once.
	// Defaults 100 and 200.
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
	// DistinctNames bounds the names a workload may ask within NameWindow.
	// Defaults 256 per 1m.
	DistinctNames int      `yaml:"distinct_names"`
	NameWindow    Duration `yaml:"name_window"`
	// TTLFloor and TTLCap clamp how long an answer stays what the workload
	// was told (the anti-spoofing truth). Defaults 60s and 1h.
	TTLFloor Duration `yaml:"ttl_floor"`
	TTLCap   Duration `yaml:"ttl_cap"`
}

// ProxyOn says whether the DNS proxy is on (the default).
func (d DNS) ProxyOn() bool { return d.Proxy == nil || *d.Proxy }

func (d DNS) validate() error {
	switch d.BlockRcode {
	case "", "nxdomain", "refused":
	default:
		return fmt.Errorf("agent.dns.block_rcode: %q is neither nxdomain nor refused", d.BlockRcode)
	}
	if d.Rate < 0 || d.Burst < 0 || d.DistinctNames < 0 || d.NameWindow < 0 || d.TTLFloor < 0 || d.TTLCap < 0 {
		return fmt.Errorf("agent.dns: rate, burst, distinct_names, name_window, ttl_floor and ttl_cap must not be negative")
	}
	if d.TTLCap != 0 && d.TTLCap < d.TTLFloor {
		return fmt.Errorf("agent.dns.ttl_cap: %s is below ttl_floor %s", time.Duration(d.TTLCap), time.Duration(d.TTLFloor))
	}
	return nil
}

type Limits struct {
	// HeadBytes caps a connection's first bytes and every HTTP/1.x request
	// or response head the proxy reads. Default 65536.
	HeadBytes int `yaml:"head_bytes"`
	// PendingPerWorkload caps one workload's connections waiting for a
	// decision. Default 256.
	PendingPerWorkload int `yaml:"pending_per_workload"`
	// Pending caps them over all workloads. Default 1024.
	Pending int `yaml:"pending"`
	// RelaysPerWorkload caps one workload's relayed connections. Default
	// 512.
	RelaysPerWorkload int `yaml:"relays_per_workload"`
	// Relays caps them over all workloads. Default 2048.
	Relays int `yaml:"relays"`
}

// Workload is one protected workload.
type Workload struct {
	// Name identifies the workload in receipts and status. Required, unique.
	Name string `yaml:"name"`
	// Cgroup is the workload's cgroup v2 directory, absolute or relative
	// to the cgroup2 mount. Required.
	Cgroup string `yaml:"cgroup"`
	// Netns is the network namespace its processes use (a path such as
	// /var/run/netns/NAME or /proc/PID/ns/net). Default: the host's.
	Netns string `yaml:"netns"`
	// Labels are identity labels recorded in every receipt.
	Labels map[string]string `yaml:"labels"`
	// Exempt destinations pass untouched: no proxy, no receipt. Danger: each
	// entry widens access past the policy.
	Exempt []Exempt `yaml:"exempt"`
	// Egress restricts the workload's outbound connections beyond the policy.
	Egress Egress `yaml:"egress"`
	// Inbound says what the workload may receive. Default: nothing.
	Inbound Inbound `yaml:"inbound"`
}

// Egress restricts a workload's outbound connections beyond the policy.
type Egress struct {
	// AllowPorts, when not empty, are the only destination ports the proxy
	// allows, whatever the policy says of the name (HushSpec egress patterns
	// carry no ports). Default: every port.
	AllowPorts []uint16 `yaml:"allow_ports"`
}

// Inbound says what a workload may receive. By default a protected workload
// cannot be reached: a bind() to a fixed port (TCP or UDP) fails with EPERM,
// and a TCP listener on a port the kernel picks receives no connection; each
// refusal gets a deny receipt.
type Inbound struct {
	// AllowPorts are the local ports the workload may bind to and listen on,
	// TCP and UDP. Default: none.
	AllowPorts []uint16 `yaml:"allow_ports"`
	// AllowAll lets the workload bind and listen on every port. Danger: any
	// peer that can reach its addresses then connects in undecided and
	// unreceipted. Default false.
	AllowAll bool `yaml:"allow_all"`
}

// Exempt is a destination a workload reaches without the proxy.
type Exempt struct {
	// CIDR is an address or prefix. Required.
	CIDR string `yaml:"cidr"`
	// Ports limits the exemption to these ports. Default: every port.
	Ports []uint16 `yaml:"ports"`
	// Proto is tcp, udp, or empty for both.
	Proto string `yaml:"proto"`
}

// Duration is a time.Duration written as Go writes durations ("5s", "1m30s").
type Duration time.Duration

// UnmarshalYAML parses a duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: duration must be a string like 5s: %w", n.Line, err)
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: invalid duration %q", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// D returns the duration, or def when it is zero.
func (d Duration) D(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// Load reads, interpolates and parses kernel.yaml, then validates it.
func Load(path string, lookup func(string) (string, bool)) (*Config, error) {
	return LoadContext(context.Background(), path, lookup)
}

// LoadContext is Load that gives up once ctx is done. Only a regular file
// is read (regfile): a FIFO or device given as --config is refused at once.
func LoadContext(ctx context.Context, path string, lookup func(string) (string, bool)) (*Config, error) {
	data, err := regfile.ReadFile(ctx, path, MaxFileSize)
	if err != nil {
		return nil, fmt.Errorf("read kernel config: %w", err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("read kernel config %s: larger than %d bytes", path, MaxFileSize)
	}
	c, err := Parse(data, lookup)
	var pe *ParseError
	if errors.As(err, &pe) {
		// PATH:LINE: KEY: MSG, as compilers write it.
		return nil, fmt.Errorf("kernel config: %s", pe.format(path))
	}
	if err != nil {
		return nil, fmt.Errorf("kernel config %s: %w", path, err)
	}
	return c, nil
}

// Parse interpolates and parses kernel.yaml text, then validates it.
func Parse(data []byte, lookup func(string) (string, bool)) (*Config, error) {
	text, err := Interpolate(string(data), lookup)
	if err != nil {
		return nil, err
	}
	// Walk the tree first, so that a mistyped key is reported as the key
	// it is (with the nearest known one), never as a Go type.
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(text), &root); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	probs, lines := checkKeys(&root)
	if len(probs) > 0 {
		return nil, &ParseError{Problems: probs}
	}
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(text))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, errEOF) {
		return nil, keyTypeErrors(err, lines)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks values the YAML types cannot.
func (c *Config) Validate() error {
	if c.Version != 0 && c.Version != 1 {
		return fmt.Errorf("version: %d is not supported (only 1)", c.Version)
	}
	switch c.Receipts.Mode {
	case "", "sync", "async":
	default:
		return fmt.Errorf("receipts.mode: %q is neither sync nor async", c.Receipts.Mode)
	}
	if c.Receipts.CheckpointEvery < 0 {
		return fmt.Errorf("receipts.checkpoint_every: must not be negative")
	}
	if err := c.Sidecar.validate(); err != nil {
		return err
	}
	if err := c.Sessions.validate(); err != nil {
		return err
	}
	if err := c.Agent.DNS.validate(); err != nil {
		return err
	}
	for i, r := range c.Agent.Resolvers {
		if _, err := netip.ParseAddrPort(r); err != nil {
			return fmt.Errorf("agent.resolvers[%d]: %q is not address:port: %w", i, r, err)
		}
	}
	for name, addrs := range c.Agent.Hosts {
		for _, a := range addrs {
			if _, err := netip.ParseAddr(a); err != nil {
				return fmt.Errorf("agent.hosts[%s]: %q is not an IP address", name, a)
			}
		}
	}
	l := c.Agent.Limits
	for _, f := range []struct {
		key string
		v   int
	}{{"head_bytes", l.HeadBytes}, {"pending_per_workload", l.PendingPerWorkload}, {"pending", l.Pending},
		{"relays_per_workload", l.RelaysPerWorkload}, {"relays", l.Relays}} {
		if f.v < 0 {
			return fmt.Errorf("agent.limits.%s: must not be negative", f.key)
		}
	}
	if l.HeadBytes != 0 && l.HeadBytes < 1024 {
		return fmt.Errorf("agent.limits.head_bytes: %d is below 1024, too small for a request head", l.HeadBytes)
	}
	seen := map[string]bool{}
	for i, w := range c.Agent.Workloads {
		if w.Name == "" {
			return fmt.Errorf("agent.workloads[%d].name: required", i)
		}
		if seen[w.Name] {
			return fmt.Errorf("agent.workloads[%d].name: %q is used twice", i, w.Name)
		}
		seen[w.Name] = true
		if w.Cgroup == "" {
			return fmt.Errorf("agent.workloads[%d] (%s).cgroup: required", i, w.Name)
		}
		if err := validPorts(w.Egress.AllowPorts); err != nil {
			return fmt.Errorf("agent.workloads[%d] (%s).egress.allow_ports: %w", i, w.Name, err)
		}
		if err := validPorts(w.Inbound.AllowPorts); err != nil {
			return fmt.Errorf("agent.workloads[%d] (%s).inbound.allow_ports: %w", i, w.Name, err)
		}
		for j, e := range w.Exempt {
			if _, err := ParsePrefix(e.CIDR); err != nil {
				return fmt.Errorf("agent.workloads[%d].exempt[%d].cidr: %w", i, j, err)
			}
			switch e.Proto {
			case "", "tcp", "udp":
			default:
				return fmt.Errorf("agent.workloads[%d].exempt[%d].proto: %q is neither tcp nor udp", i, j, e.Proto)
			}
		}
	}
	return nil
}

// validPorts refuses port 0, which names no port here (allow_all does).
func validPorts(ports []uint16) error {
	for _, p := range ports {
		if p == 0 {
			return errors.New("port 0 is not a port")
		}
	}
	return nil
}

// ParsePrefix accepts a CIDR or a single address (as a full-length prefix).
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR: %w", s, err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a CIDR", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

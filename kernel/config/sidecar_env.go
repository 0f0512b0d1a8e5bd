package config

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/backbay-labs/chio-agent/internal/policysource"
	"github.com/backbay-labs/chio-agent/kernel"
)

// The CHIO_* environment contract (docs/sidecar.md lists what each does).
const (
	EnvListenAddr             = "CHIO_LISTEN_ADDR"
	EnvHealthPath             = "CHIO_HEALTH_PATH"
	EnvKernelConfigPath       = "CHIO_KERNEL_CONFIG_PATH"
	EnvPolicySource           = "CHIO_POLICY_SOURCE"
	EnvPolicyWatchInterval    = "CHIO_POLICY_WATCH_INTERVAL"
	EnvReceiptSink            = "CHIO_RECEIPT_SINK"
	EnvSigningKey             = kernel.EnvSigningKey
	EnvCapabilityAuthorityURL = "CHIO_CAPABILITY_AUTHORITY_URL"
	EnvLogLevel               = "CHIO_LOG_LEVEL"
	EnvTrustedIssuerKey       = kernel.EnvTrustedIssuerKey
	EnvTrustedIssuerKeys      = kernel.EnvTrustedIssuerKeys
	EnvSidecarControlToken    = "CHIO_SIDECAR_CONTROL_TOKEN"
)

// SidecarEnv is every variable `api protect` reads, in the guide's order.
// Deployment manifests for the sidecar may name these and no others (their
// drift tests check it).
var SidecarEnv = append([]string{
	EnvListenAddr, EnvHealthPath, EnvKernelConfigPath, EnvPolicySource, EnvPolicyWatchInterval, EnvReceiptSink,
	EnvSigningKey, EnvCapabilityAuthorityURL, EnvLogLevel, EnvTrustedIssuerKey,
	EnvTrustedIssuerKeys, EnvSidecarControlToken,
}, SessionEnv...)

// NodeAgentEnv is the part of the contract `run` and `exec` read: the node
// agent has no listener of its own to configure, no capability tokens and
// no admin surface.
var NodeAgentEnv = []string{EnvKernelConfigPath, EnvPolicySource, EnvPolicyWatchInterval, EnvReceiptSink, EnvSigningKey, EnvLogLevel}

// MinControlTokenBytes is the shortest CHIO_SIDECAR_CONTROL_TOKEN accepted:
// a short token on a network-reachable admin surface is guessable.
const MinControlTokenBytes = 16

// SidecarFlags are the command line values of `api protect`; empty means
// not given. Flags override the environment, which overrides kernel.yaml.
type SidecarFlags struct {
	Config       string // kernel.yaml path
	Upstream     string
	Spec         string
	Listen       string
	HealthPath   string
	Policy       string
	Receipts     string
	ReceiptMode  string
	KeyFile      string
	LogLevel     string
	ToolServer   string
	MaxBodyBytes int64 // 0: not given
}

// SidecarSettings is everything `api protect` needs, merged from flags,
// environment and kernel.yaml with defaults filled in and syntax checked.
// Nothing has been opened or fetched yet.
type SidecarSettings struct {
	// Common is what the node agent resolves alike (config path, policy,
	// receipt log, signing key, log level), by the same rules.
	Common
	// TrustedIssuerKeys are the capability issuers trusted; empty means
	// capability tokens are not required (and not read).
	TrustedIssuerKeys []ed25519.PublicKey
	// CapabilityAuthorityURL is where agents get tokens, or "".
	CapabilityAuthorityURL string
	// ControlToken opens the admin surface; "" keeps it closed. Secret.
	ControlToken string
	// Listen is host:port.
	Listen string
	// HealthPath is the readiness endpoint's path.
	HealthPath string
	// Upstream is the protected API's base URL (checked by ParseUpstream).
	Upstream string
	// Spec is the OpenAPI document's path.
	Spec string
	// ToolServer is the receipts' tool_server; "" means the upstream's origin.
	ToolServer string
	// MaxBodyBytes bounds request bodies.
	MaxBodyBytes int64
	// Timeouts bound connections.
	Timeouts ResolvedTimeouts
	// Sessions say how requests name sessions, where their journal is and
	// what limits them.
	Sessions ResolvedSessions
}

// ResolveSidecar merges flags, the environment and kernel.yaml (named by
// --config or CHIO_KERNEL_CONFIG_PATH) into settings. It fails closed with
// an error naming what is wrong: a kernel.yaml that cannot be read, a
// missing policy, upstream or spec, a scheme this build cannot read or
// write, a malformed key or token.
func ResolveSidecar(f SidecarFlags, lookup func(string) (string, bool)) (*SidecarSettings, error) {
	c, err := Resolve(context.Background(), Flags{Config: f.Config, Policy: f.Policy, Receipts: f.Receipts,
		ReceiptMode: f.ReceiptMode, KeyFile: f.KeyFile, LogLevel: f.LogLevel},
		Defaults{Receipts: DefaultSidecarReceipts, LogLevel: "info"}, lookup)
	if err != nil {
		return nil, fmt.Errorf("resolve sidecar: %w", err)
	}
	cfg := c.Config
	sc := cfg.Sidecar
	s := &SidecarSettings{Common: *c}

	s.TrustedIssuerKeys, err = kernel.TrustedIssuerKeys(kernel.LookupEnv(lookup))
	if err != nil {
		return nil, fmt.Errorf("resolve sidecar: %w", err)
	}
	if len(s.TrustedIssuerKeys) == 0 {
		for i, h := range cfg.TrustedIssuerKeys {
			k, err := kernel.ParsePublicKeyHex(strings.TrimSpace(h))
			if err != nil {
				return nil, fmt.Errorf("resolve sidecar: trusted_issuer_keys[%d]: %w", i, err)
			}
			s.TrustedIssuerKeys = append(s.TrustedIssuerKeys, k)
		}
	}

	s.CapabilityAuthorityURL = Pick(lookup, "", EnvCapabilityAuthorityURL, sc.CapabilityAuthorityURL, "")
	if s.CapabilityAuthorityURL != "" {
		if err := checkAuthorityURL(s.CapabilityAuthorityURL); err != nil {
			return nil, fmt.Errorf("resolve sidecar: %s: %w", EnvCapabilityAuthorityURL, err)
		}
	}

	// The token is taken as set, untrimmed: a secret is compared byte for byte.
	if v, ok := lookup(EnvSidecarControlToken); ok && v != "" {
		if len(v) < MinControlTokenBytes {
			return nil, fmt.Errorf("resolve sidecar: %s is %d bytes; use at least %d random bytes (or unset it to keep the admin surface closed)", EnvSidecarControlToken, len(v), MinControlTokenBytes)
		}
		s.ControlToken = v
	}

	s.Listen = Pick(lookup, f.Listen, EnvListenAddr, sc.Listen, DefaultSidecarListen)
	if _, port, err := net.SplitHostPort(s.Listen); err != nil {
		return nil, fmt.Errorf("resolve sidecar: listen address %q is not host:port: %w", s.Listen, err)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return nil, fmt.Errorf("resolve sidecar: listen address %q: port %q is not a number", s.Listen, port)
	}
	s.HealthPath = Pick(lookup, f.HealthPath, EnvHealthPath, sc.HealthPath, DefaultHealthPath)
	if err := checkHealthPath(s.HealthPath); err != nil {
		return nil, fmt.Errorf("resolve sidecar: health path: %w", err)
	}

	s.Upstream = Pick(lookup, f.Upstream, "", sc.Upstream, "")
	if s.Upstream == "" {
		return nil, fmt.Errorf("resolve sidecar: no upstream: give --upstream URL or sidecar.upstream in kernel.yaml")
	}
	if _, err := ParseUpstream(s.Upstream); err != nil {
		return nil, fmt.Errorf("resolve sidecar: upstream: %w", err)
	}
	spec := Pick(lookup, f.Spec, "", sc.Spec, "")
	if spec == "" {
		return nil, fmt.Errorf("resolve sidecar: no OpenAPI spec: give --spec FILE or sidecar.spec in kernel.yaml")
	}
	if s.Spec, err = localPath("spec", spec); err != nil {
		return nil, err
	}
	s.ToolServer = Pick(lookup, f.ToolServer, "", sc.ToolServer, "")
	s.MaxBodyBytes = sc.MaxBodyBytes
	if f.MaxBodyBytes != 0 {
		s.MaxBodyBytes = f.MaxBodyBytes
	}
	if s.MaxBodyBytes < 0 {
		return nil, fmt.Errorf("resolve sidecar: max body bytes must not be negative")
	}
	if s.MaxBodyBytes == 0 {
		s.MaxBodyBytes = DefaultMaxBodyBytes
	}
	s.Timeouts = sc.Timeouts.withDefaults()
	if s.Sessions, err = ResolveSessions(lookup, cfg.Sessions, s.ReceiptPath); err != nil {
		return nil, fmt.Errorf("resolve sidecar: sessions: %w", err)
	}
	return s, nil
}

// CheckPolicyScheme refuses, before anything is fetched, a policy source
// whose scheme LoadPolicy cannot read.
func CheckPolicyScheme(source string) error {
	scheme, _, ok := strings.Cut(source, "://")
	if !ok {
		return nil
	}
	switch scheme {
	case "file", "http", "https":
		return nil
	}
	if policysource.IsStore(source) {
		if _, err := policysource.Parse(source); err != nil {
			return fmt.Errorf("policy source: %w", err)
		}
		return nil
	}
	return fmt.Errorf("policy source: %w %q in %q (%s)", ErrUnsupportedScheme, scheme, source, readsPolicies)
}

// localPath accepts a path or file://PATH and refuses other schemes.
func localPath(what, s string) (string, error) {
	scheme, _, ok := strings.Cut(s, "://")
	if !ok {
		return s, nil
	}
	if scheme != "file" {
		return "", fmt.Errorf("%s: %w %q in %q (this build reads a path or file://)", what, ErrUnsupportedScheme, scheme, s)
	}
	// ReceiptPath applies the same file:// rules.
	p, err := ReceiptPath(s)
	if err != nil {
		return "", fmt.Errorf("%s: %q is not a file:// URL of a local path", what, s)
	}
	return p, nil
}

func first(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

package config

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Sidecar defaults, shared by the binary, the docs and the manifests' drift
// tests (which check that every manifest probes the path and port served).
const (
	// DefaultSidecarListen is loopback only: a sidecar that should be
	// reachable from elsewhere (a container's other side, a load balancer)
	// must say so with CHIO_LISTEN_ADDR or --listen.
	DefaultSidecarListen = "127.0.0.1:9090"
	// DefaultHealthPath is the readiness endpoint.
	DefaultHealthPath = "/chio/health"
	// DefaultMaxBodyBytes bounds a proxied request body (10 MiB).
	DefaultMaxBodyBytes = 10 << 20
	// DefaultSidecarReceipts is where a sidecar keeps its receipt log when
	// nothing else says: the working directory, so a first try on a laptop
	// needs no root. Containers set CHIO_RECEIPT_SINK to a mounted volume.
	DefaultSidecarReceipts = "chio-receipts.db"
)

// Sidecar configures `chio-agent api protect`; ignored by the node agent.
type Sidecar struct {
	// Listen is the address the sidecar serves on (host:port). Default
	// 127.0.0.1:9090. Env: CHIO_LISTEN_ADDR.
	Listen string `yaml:"listen"`
	// Upstream is the protected API's base URL (http or https). Required.
	Upstream string `yaml:"upstream"`
	// Spec is the OpenAPI 3.x document (YAML or JSON; a path or
	// file://PATH) that names the upstream's operations. Required.
	Spec string `yaml:"spec"`
	// HealthPath is the readiness endpoint. Default /chio/health. Env:
	// CHIO_HEALTH_PATH.
	HealthPath string `yaml:"health_path"`
	// ToolServer is the receipts' tool_server and the server_id capability
	// grants must name. Default: the upstream's origin (scheme://host:port).
	ToolServer string `yaml:"tool_server"`
	// MaxBodyBytes bounds a proxied request body; larger requests are
	// refused with 413. Default 10 MiB.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// CapabilityAuthorityURL is where agents obtain capability tokens; the
	// sidecar names it in refusals for a missing token and in status. It
	// does not fetch keys from it. Env: CHIO_CAPABILITY_AUTHORITY_URL.
	CapabilityAuthorityURL string `yaml:"capability_authority_url"`
	// Timeouts bound client and upstream connections.
	Timeouts SidecarTimeouts `yaml:"timeouts"`
}

// SidecarTimeouts bound the sidecar's connections.
type SidecarTimeouts struct {
	// ReadHeader bounds reading a request's head. Default 10s.
	ReadHeader Duration `yaml:"read_header"`
	// Read bounds reading a whole request, body included. Default 5m.
	Read Duration `yaml:"read"`
	// Write bounds writing a response, from the end of the request head.
	// Default 5m.
	Write Duration `yaml:"write"`
	// Idle closes a keep-alive client connection after this long. Default 2m.
	Idle Duration `yaml:"idle"`
	// Dial bounds connecting to the upstream. Default 10s.
	Dial Duration `yaml:"dial"`
	// UpstreamHeader bounds waiting for the upstream's response head after
	// the request was sent. Default 1m.
	UpstreamHeader Duration `yaml:"upstream_header"`
}

func (s *Sidecar) validate() error {
	if s.Listen != "" {
		if _, _, err := net.SplitHostPort(s.Listen); err != nil {
			return fmt.Errorf("sidecar.listen: %q is not host:port: %w", s.Listen, err)
		}
	}
	if s.Upstream != "" {
		if _, err := ParseUpstream(s.Upstream); err != nil {
			return fmt.Errorf("sidecar.upstream: %w", err)
		}
	}
	if s.HealthPath != "" {
		if err := checkHealthPath(s.HealthPath); err != nil {
			return fmt.Errorf("sidecar.health_path: %w", err)
		}
	}
	if s.MaxBodyBytes < 0 {
		return fmt.Errorf("sidecar.max_body_bytes: must not be negative")
	}
	if s.CapabilityAuthorityURL != "" {
		if err := checkAuthorityURL(s.CapabilityAuthorityURL); err != nil {
			return fmt.Errorf("sidecar.capability_authority_url: %w", err)
		}
	}
	return nil
}

// ParseUpstream checks an upstream base URL: http or https, a host, no
// userinfo (credentials in a URL end up in logs), no query or fragment.
func ParseUpstream(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: scheme must be http or https", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%q: no host", s)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%q: credentials in the URL are refused (they would be logged)", redactURL(u))
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q: a query or fragment has no meaning in a base URL", s)
	}
	return u, nil
}

func redactURL(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

func checkHealthPath(p string) error {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?# ") {
		return fmt.Errorf("%q must be an absolute path without query or spaces", p)
	}
	return nil
}

func checkAuthorityURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http(s) URL", s)
	}
	return nil
}

// timeoutsOrDefault fills the sidecar's timeouts.
func (t SidecarTimeouts) withDefaults() ResolvedTimeouts {
	return ResolvedTimeouts{
		ReadHeader:     t.ReadHeader.D(10 * time.Second),
		Read:           t.Read.D(5 * time.Minute),
		Write:          t.Write.D(5 * time.Minute),
		Idle:           t.Idle.D(2 * time.Minute),
		Dial:           t.Dial.D(10 * time.Second),
		UpstreamHeader: t.UpstreamHeader.D(time.Minute),
	}
}

// ResolvedTimeouts are SidecarTimeouts with the defaults filled in.
type ResolvedTimeouts struct {
	ReadHeader, Read, Write, Idle, Dial, UpstreamHeader time.Duration
}

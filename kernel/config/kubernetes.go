package config

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// Kubernetes defaults and names, shared by the node agent, the docs and the
// manifests.
const (
	// PolicyLabel is the pod label that chooses a policy by name.
	PolicyLabel = "chio.dev/policy"
	// NoPolicy as default_policy protects only labelled pods. It is never a
	// policy name, and a pod labelled with it is refused everything: a pod's
	// author cannot opt out by label.
	NoPolicy = "none"
	// DefaultPollInterval is how often the CRI is listed again when the
	// runtime sends no events.
	DefaultPollInterval = time.Second
	// MinPollInterval bounds poll_interval from below so that the agent does
	// not hammer the runtime.
	MinPollInterval = 100 * time.Millisecond
)

// DefaultCRISockets are the runtimes' sockets tried in order when
// cri_socket is not set: containerd's, then CRI-O's.
var DefaultCRISockets = []string{
	"/run/containerd/containerd.sock",
	"/var/run/crio/crio.sock",
}

// Kubernetes configures pod discovery through the CRI (docs/kernel-yaml.md).
// Its presence in kernel.yaml turns it on.
type Kubernetes struct {
	// CRISocket is the runtime's CRI gRPC socket (a path or unix://PATH).
	// Default: the first of DefaultCRISockets that exists.
	CRISocket string `yaml:"cri_socket"`
	// CgroupRoot is the root of the pods' cgroup subtree: "auto" (default:
	// kubepods.slice or kubepods, whichever exists) or a directory,
	// absolute or relative to the cgroup2 mount.
	CgroupRoot string `yaml:"cgroup_root"`
	// Policies name the policies pods can be given: name → source (a path,
	// file://PATH or http(s)://URL, as the top-level policy). A name is a
	// valid label value, since the PolicyLabel label names it. At least one.
	Policies map[string]string `yaml:"policies"`
	// DefaultPolicy is the policy of pods with no PolicyLabel label in
	// non-exempt namespaces: a key of Policies, or "none" to protect only
	// labelled pods. Required: which pods go unprotected is never implied.
	DefaultPolicy string `yaml:"default_policy"`
	// ExemptNamespaces are namespaces whose unlabelled pods are not
	// protected (typically kube-system and the agent's own). Danger: every
	// pod there reaches the network undecided. Default: none.
	ExemptNamespaces []string `yaml:"exempt_namespaces"`
	// PollInterval is how often the CRI is listed again. Default 1s,
	// at least 100ms.
	PollInterval Duration `yaml:"poll_interval"`
}

// kubernetesFields are the keys of the section, read from the yaml tags so
// that a new field cannot be forgotten here.
var kubernetesFields = func() map[string]bool {
	m := map[string]bool{}
	t := reflect.TypeFor[Kubernetes]()
	for i := range t.NumField() {
		m[t.Field(i).Tag.Get("yaml")] = true
	}
	return m
}()

// UnmarshalYAML decodes and validates the section. It checks unknown keys
// itself: a custom unmarshaller does not inherit the file decoder's
// strictness.
func (k *Kubernetes) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: kubernetes: must be a mapping", n.Line)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := n.Content[i]
		if !kubernetesFields[key.Value] {
			return fmt.Errorf("line %d: field %s not found in kubernetes", key.Line, key.Value)
		}
	}
	type plain Kubernetes
	var p plain
	if err := n.Decode(&p); err != nil {
		return err
	}
	*k = Kubernetes(p)
	if err := k.Validate(); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}

// Validate checks the section; Parse calls it through UnmarshalYAML.
func (k *Kubernetes) Validate() error {
	if k.CRISocket != "" {
		if p := strings.TrimPrefix(k.CRISocket, "unix://"); !filepath.IsAbs(p) {
			return fmt.Errorf("kubernetes.cri_socket: %q is not an absolute path or unix://PATH", k.CRISocket)
		}
	}
	if k.CgroupRoot != "" && k.CgroupRoot != "auto" {
		if slices.Contains(strings.Split(k.CgroupRoot, "/"), "..") {
			return fmt.Errorf("kubernetes.cgroup_root: %q has a .. component", k.CgroupRoot)
		}
	}
	if len(k.Policies) == 0 {
		return fmt.Errorf("kubernetes.policies: at least one policy is required")
	}
	for name, src := range k.Policies {
		if name == NoPolicy {
			return fmt.Errorf("kubernetes.policies: %q is reserved (default_policy: none)", NoPolicy)
		}
		if !validLabelValue(name) {
			return fmt.Errorf("kubernetes.policies: %q is not a valid label value (1-63 letters, digits, -_. starting and ending alphanumeric), so no %s label could name it", name, PolicyLabel)
		}
		if src == "" {
			return fmt.Errorf("kubernetes.policies.%s: empty source", name)
		}
	}
	switch {
	case k.DefaultPolicy == "":
		return fmt.Errorf("kubernetes.default_policy: required (a policy name, or %q to protect only labelled pods)", NoPolicy)
	case k.DefaultPolicy != NoPolicy && k.Policies[k.DefaultPolicy] == "":
		return fmt.Errorf("kubernetes.default_policy: %q is not in kubernetes.policies", k.DefaultPolicy)
	}
	seen := map[string]bool{}
	for i, ns := range k.ExemptNamespaces {
		if !validDNSLabel(ns) {
			return fmt.Errorf("kubernetes.exempt_namespaces[%d]: %q is not a namespace name", i, ns)
		}
		if seen[ns] {
			return fmt.Errorf("kubernetes.exempt_namespaces[%d]: %q is listed twice", i, ns)
		}
		seen[ns] = true
	}
	if k.PollInterval != 0 && time.Duration(k.PollInterval) < MinPollInterval {
		return fmt.Errorf("kubernetes.poll_interval: %s is below %s", time.Duration(k.PollInterval), MinPollInterval)
	}
	return nil
}

// validLabelValue is Kubernetes' rule for a non-empty label value.
func validLabelValue(s string) bool {
	if len(s) == 0 || len(s) > 63 || !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

// validDNSLabel is Kubernetes' rule for a namespace name (RFC 1123 label).
func validDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// PolicyLoader loads one policy source (LoadPolicy, with the configuration's
// panic file).
type PolicyLoader func(ctx context.Context, source string) (*hushspec.Policy, error)

// LoadPolicies loads every policy of kubernetes.policies with load. It
// returns every policy that loaded, and an error naming each that did not
// (its name and source): the node agent refuses to start on any (fail
// closed: a pod must never be decided by a policy other than its own), and a
// reload keeps the old policy of each name that failed.
func (k *Kubernetes) LoadPolicies(ctx context.Context, load PolicyLoader) (map[string]*hushspec.Policy, error) {
	res := k.LoadEach(ctx, load, nil)
	out := make(map[string]*hushspec.Policy, len(res))
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(res)) {
		if r := res[name]; r.Err != nil {
			errs = append(errs, r.Err)
		} else {
			out[name] = r.Policy
		}
	}
	return out, errors.Join(errs...)
}

// PolicyResult is the outcome of loading one policy of the section.
type PolicyResult struct {
	// Policy is the policy loaded; nil when Err is set.
	Policy *hushspec.Policy
	// Err names the policy and its source.
	Err error
}

// LoadEach loads the policies of the section named in only (nil: all),
// each on its own, by name.
func (k *Kubernetes) LoadEach(ctx context.Context, load PolicyLoader, only []string) map[string]PolicyResult {
	out := map[string]PolicyResult{}
	for name, src := range k.Policies {
		if only != nil && !slices.Contains(only, name) {
			continue
		}
		p, err := load(ctx, src)
		if err == nil && p == nil {
			err = errors.New("no policy")
		}
		if err != nil {
			out[name] = PolicyResult{Err: fmt.Errorf("load kubernetes.policies.%s from %s: %w", name, src, err)}
			continue
		}
		out[name] = PolicyResult{Policy: p}
	}
	return out
}

// PolicyFile is the local file a policy source names (a path or
// file://PATH), to watch for changes; "" for a source that is not a local
// file (http(s)://).
func PolicyFile(source string) string {
	scheme, _, ok := strings.Cut(source, "://")
	switch {
	case !ok:
		return source
	case scheme == "file":
		if u, err := url.Parse(source); err == nil {
			return u.Path
		}
	}
	return ""
}

package main

// Manifest drift for deploy/kubernetes: every manifest decodes strictly into
// the Kubernetes API types (an unknown, misspelt or repeated field fails, as
// the API server's strict field validation would), and says only what this
// binary does: its commands and flags, its CHIO_* variables, a kernel.yaml
// it loads, and paths, ports and names that agree with that kernel.yaml.
// Nothing here needs root or a cluster.

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// kubeManifest is one document of a manifest file, decoded.
type kubeManifest struct {
	file string
	obj  any // *corev1.Namespace, *corev1.ConfigMap, *corev1.Service, *appsv1.DaemonSet, *batchv1.Job
}

// kubeKinds are the only kinds deploy/kubernetes may hold: the agent needs
// no API access, so no ServiceAccount and no RBAC.
var kubeKinds = map[string]func() any{
	"v1/Namespace":      func() any { return &corev1.Namespace{} },
	"v1/ConfigMap":      func() any { return &corev1.ConfigMap{} },
	"v1/Service":        func() any { return &corev1.Service{} },
	"apps/v1/DaemonSet": func() any { return &appsv1.DaemonSet{} },
	"batch/v1/Job":      func() any { return &batchv1.Job{} },
}

// decodeKubeStrict decodes one YAML document into a new object of its kind:
// duplicate keys fail (YAML), and so do unknown fields and fields whose
// case differs from the API's (sigs.k8s.io/json, the API server's decoder).
func decodeKubeStrict(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	mk := kubeKinds[tm.APIVersion+"/"+tm.Kind]
	if mk == nil {
		return nil, errors.New("kind " + tm.APIVersion + "/" + tm.Kind + " is not one the node agent's manifests use")
	}
	js, err := sigsyaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, err
	}
	obj := mk()
	strict, err := sigsjson.UnmarshalStrict(js, obj)
	if err != nil {
		return nil, err
	}
	if len(strict) > 0 {
		return nil, errors.Join(strict...)
	}
	return obj, nil
}

// splitYAML returns the non-empty documents of a YAML stream.
func splitYAML(t *testing.T, b []byte) [][]byte {
	t.Helper()
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var docs [][]byte
	for {
		d, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatal(err)
		}
		var probe map[string]any
		if sigsyaml.Unmarshal(d, &probe) == nil && len(probe) > 0 {
			docs = append(docs, d)
		}
	}
}

// kubeManifests decodes every manifest under deploy/kubernetes (the
// kustomization aside), failing the test on any that does not decode.
func kubeManifests(t *testing.T) []kubeManifest {
	t.Helper()
	root := filepath.Join(deployDir(t), "kubernetes")
	var out []kubeManifest
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") || d.Name() == "kustomization.yaml" {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, doc := range splitYAML(t, b) {
			obj, err := decodeKubeStrict(doc)
			if err != nil {
				t.Errorf("kubernetes/%s document %d: %v", rel, i+1, err)
				continue
			}
			out = append(out, kubeManifest{file: rel, obj: obj})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// only returns the one object of type T in ms.
func only[T any](t *testing.T, ms []kubeManifest) (T, string) {
	t.Helper()
	var found []T
	var files []string
	for _, m := range ms {
		if o, ok := m.obj.(T); ok {
			found = append(found, o)
			files = append(files, m.file)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want one %T in deploy/kubernetes, found %d (%v)", zero, len(found), files)
	}
	return found[0], files[0]
}

// TestKubeManifestsStrict: a field the API does not have, or one spelt in
// another case, or given twice, fails the decoding the other tests rely on.
func TestKubeManifestsStrict(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir(t), "kubernetes", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeKubeStrict(b); err != nil {
		t.Fatalf("daemonset.yaml: %v", err)
	}
	for name, edit := range map[string]func(string) string{
		"unknown field": func(s string) string {
			return strings.Replace(s, "      hostNetwork: true\n", "      hostNetwork: true\n      hostNetwrok: true\n", 1)
		},
		"field in another case": func(s string) string {
			return strings.Replace(s, "      hostNetwork: true\n", "      hostnetwork: true\n", 1)
		},
		"repeated field": func(s string) string {
			return strings.Replace(s, "      hostNetwork: true\n", "      hostNetwork: true\n      hostNetwork: false\n", 1)
		},
		"a kind with no business here": func(string) string {
			return "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: x}\n"
		},
	} {
		doc := edit(string(b))
		if doc == string(b) {
			t.Fatalf("%s: the edit did not apply", name)
		}
		if _, err := decodeKubeStrict([]byte(doc)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

// podView answers what a path in a pod's container is: which volume is
// mounted there, and how.
type podView struct {
	spec      *corev1.PodSpec
	container *corev1.Container
}

type mounted struct {
	mount corev1.VolumeMount
	vol   corev1.Volume
	// rel is the path below the mount point ("" for the mount point).
	rel string
}

// at returns the volume mounted deepest on path's way, if any.
func (p podView) at(path string) (mounted, bool) {
	path = filepath.Clean(path)
	var best mounted
	found := false
	for _, m := range p.container.VolumeMounts {
		mp := filepath.Clean(m.MountPath)
		if path != mp && !strings.HasPrefix(path, mp+"/") {
			continue
		}
		if found && len(mp) <= len(filepath.Clean(best.mount.MountPath)) {
			continue
		}
		for _, v := range p.spec.Volumes {
			if v.Name == m.Name {
				best = mounted{mount: m, vol: v, rel: strings.TrimPrefix(strings.TrimPrefix(path, mp), "/")}
				found = true
			}
		}
	}
	return best, found
}

// hostPath checks that path is on a hostPath volume mounted at the node's
// own path (so that the path means in the container what it means to the
// runtime and the kernel), read-only or not as asked.
func (p podView) hostPath(t *testing.T, src, what, path string, readOnly bool) mounted {
	t.Helper()
	m, ok := p.at(path)
	switch {
	case !ok || m.vol.HostPath == nil:
		t.Errorf("%s: %s %s is on no hostPath volume", src, what, path)
	case filepath.Clean(m.vol.HostPath.Path) != filepath.Clean(m.mount.MountPath):
		t.Errorf("%s: %s %s: node path %s mounted at %s; the node's paths must keep their names", src, what, path, m.vol.HostPath.Path, m.mount.MountPath)
	case m.mount.ReadOnly != readOnly:
		t.Errorf("%s: %s %s: mount %s readOnly %v, want %v", src, what, path, m.mount.MountPath, m.mount.ReadOnly, readOnly)
	}
	return m
}

// configMapFile returns the content of a path on a ConfigMap volume.
func (p podView) configMapFile(t *testing.T, src, what, path string, cm *corev1.ConfigMap) string {
	t.Helper()
	m, ok := p.at(path)
	if !ok || m.vol.ConfigMap == nil || m.vol.ConfigMap.Name != cm.Name || len(m.vol.ConfigMap.Items) > 0 {
		t.Errorf("%s: %s %s is not a file of the ConfigMap %s", src, what, path, cm.Name)
		return ""
	}
	data, ok := cm.Data[m.rel]
	if !ok {
		t.Errorf("%s: %s %s: the ConfigMap %s has no key %q", src, what, path, cm.Name, m.rel)
	}
	return data
}

// checkProbe: a probe runs the image's binary with arguments it accepts,
// asking the status socket kernel.yaml names.
func checkProbe(t *testing.T, src string, p *corev1.Probe, socket string) {
	t.Helper()
	if p == nil || p.Exec == nil || len(p.Exec.Command) < 2 || p.Exec.Command[0] != "/chio-agent" {
		t.Errorf("%s must exec /chio-agent (the image has no shell)", src)
		return
	}
	checkArgs(t, src, p.Exec.Command[1:])
	if i := slices.Index(p.Exec.Command, "--status-socket"); i < 0 || i+1 >= len(p.Exec.Command) || p.Exec.Command[i+1] != socket {
		t.Errorf("%s asks another status socket than kernel.yaml's %s: %q", src, socket, p.Exec.Command)
	}
}

// flagValue returns --name's value in args ("" if absent).
func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == "--"+name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// tolerateAll: one toleration with no key and no effect, operator Exists.
func tolerateAll(ts []corev1.Toleration) bool {
	return slices.ContainsFunc(ts, func(tl corev1.Toleration) bool {
		return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	})
}

// selects reports whether a label selector (as a map) picks labels.
func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// memoryMargin is what the container's memory limit must leave above the
// Go heap ceiling agent.limits imply: the binary, the receipt log's pages
// and the eBPF maps the agent creates are charged to its cgroup too.
const memoryMargin = 256 << 20

// kubeSecretCommand is the Secret the shipped script creates: namespace,
// name and the key holding the seed.
type kubeSecretCommand struct {
	namespace, name, key string
	// images are the images it runs keygen in, without a chio-agent.
	images []string
}

func signingKeyScript(t *testing.T) kubeSecretCommand {
	t.Helper()
	b := string(readDeploy(t, "kubernetes/create-signing-key.sh"))
	var images []string
	m := regexp.MustCompile(`(?m)^kubectl -n (\S+) create secret generic (\S+) --from-file=(\w+)="\$key"$`).FindStringSubmatch(b)
	if m == nil {
		t.Fatal("create-signing-key.sh: no `kubectl -n NS create secret generic NAME --from-file=KEY=\"$key\"` line")
	}
	// Each way it runs keygen, the binary's or the image's.
	kgs := regexp.MustCompile(`(?m)(chio-agent|chio-node-agent:\S+) *\\?\n?\s*(keygen .*)$`).FindAllStringSubmatch(b, -1)
	if len(kgs) != 3 {
		t.Fatalf("create-signing-key.sh: want keygen run three ways (bin/, PATH, the image), found %d", len(kgs))
	}
	for _, kg := range kgs {
		words := regexp.MustCompile(`\$\([^)]*\)`).ReplaceAllString(kg[2], "KEY") // $(basename "$key")
		checkArgs(t, "create-signing-key.sh", strings.Fields(strings.ReplaceAll(words, `"`, "")))
		if img, ok := strings.CutPrefix(kg[1], "chio-node-agent:"); ok {
			images = append(images, "chio-node-agent:"+img)
		}
	}
	return kubeSecretCommand{namespace: m[1], name: m[2], key: m[3], images: images}
}

// TestKubeManifests checks the DaemonSet, its ConfigMap, Service and
// namespace against each other and against what the binary accepts.
func TestKubeManifests(t *testing.T) {
	ms := kubeManifests(t)
	ns, _ := only[*corev1.Namespace](t, ms)
	cm, _ := only[*corev1.ConfigMap](t, ms)
	svc, _ := only[*corev1.Service](t, ms)
	ds, dsFile := only[*appsv1.DaemonSet](t, ms)
	src := "kubernetes/" + dsFile

	for _, m := range ms {
		var meta metav1.Object
		switch o := m.obj.(type) {
		case *corev1.Namespace:
			continue
		case metav1.Object:
			meta = o
		}
		if meta.GetNamespace() != ns.Name {
			t.Errorf("kubernetes/%s: %s is in namespace %q, not %s", m.file, meta.GetName()+meta.GetGenerateName(), meta.GetNamespace(), ns.Name)
		}
	}
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace %s: the agent is privileged; Pod Security Admission must allow it there", ns.Name)
	}

	// The pod: no API access, every node, the node's network and DNS.
	pod := &ds.Spec.Template.Spec
	if ds.Spec.Selector == nil || !selects(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) {
		t.Errorf("%s: the selector does not select the template's labels", src)
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("%s: update strategy %q, want RollingUpdate", src, ds.Spec.UpdateStrategy.Type)
	} else if ru := ds.Spec.UpdateStrategy.RollingUpdate; ru != nil && ru.MaxSurge != nil && ru.MaxSurge.String() != "0" && ru.MaxSurge.String() != "0%" {
		// A surging agent finds the pin directory owned by the old one,
		// is refused, and restarts until the old one is gone.
		t.Errorf("%s: maxSurge %s: the new agent must start after the old one stops", src, ru.MaxSurge.String())
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("%s: the agent uses no Kubernetes API: automountServiceAccountToken must be false", src)
	}
	if pod.ServiceAccountName != "" || pod.DeprecatedServiceAccount != "" {
		t.Errorf("%s: the agent uses no ServiceAccount", src)
	}
	for _, v := range pod.Volumes {
		if v.Projected != nil && slices.ContainsFunc(v.Projected.Sources, func(s corev1.VolumeProjection) bool { return s.ServiceAccountToken != nil }) {
			t.Errorf("%s: volume %s projects a ServiceAccount token", src, v.Name)
		}
	}
	if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
		t.Errorf("%s: enableServiceLinks must be false: Services' variables (CHIO_NODE_AGENT_... for this namespace's) are no settings of the agent", src)
	}
	if !tolerateAll(pod.Tolerations) {
		t.Errorf("%s: the agent must tolerate every taint (operator Exists, no key, no effect): an untolerated node's pods fail closed with no agent", src)
	}
	if !pod.HostNetwork {
		t.Errorf("%s: hostNetwork must be true: host-network pods are protected in the node's namespace", src)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%s: %d containers, want the agent alone", src, len(pod.Containers))
	}
	c := &pod.Containers[0]
	view := podView{spec: pod, container: c}
	if len(c.Command) > 0 && !slices.Equal(c.Command, []string{"/chio-agent"}) {
		t.Errorf("%s: command %q; the image's entrypoint is /chio-agent", src, c.Command)
	}
	checkArgs(t, src+" args", c.Args)
	if len(c.Args) == 0 || c.Args[0] != "run" {
		t.Fatalf("%s: args %q, want run", src, c.Args)
	}
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		// Below the pods' cgroup root, the agent exempts its own cgroup,
		// read from /proc/self/cgroup, before opening a socket: only a
		// privileged container keeps the host's cgroup namespace (on cgroup
		// v2, containerd gives any other one its own, where that file says
		// "0::/"). Bidirectional propagation needs it too.
		t.Errorf("%s: the agent must be privileged (see the DaemonSet's header)", src)
	} else if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem must be true: the agent writes only to its volumes", src)
	}

	// Environment: only variables this binary reads, each as it reads it.
	env := map[string]corev1.EnvVar{}
	var names []string
	for _, e := range c.Env {
		env[e.Name] = e
		names = append(names, e.Name)
	}
	checkEnvNames(t, src, names, append(slices.Clone(config.NodeAgentEnv), agent.EnvPodUID))
	if e, ok := env[agent.EnvPodUID]; !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.uid" {
		t.Errorf("%s: %s must come from the downward API (metadata.uid): the agent's own pod is never protected", src, agent.EnvPodUID)
	}
	cfgPath := flagValue(c.Args, "config")
	if e := env[config.EnvKernelConfigPath]; e.Value != cfgPath || cfgPath == "" {
		t.Errorf("%s: --config %q and %s %q differ: kubectl exec'd commands would read another kernel.yaml", src, cfgPath, config.EnvKernelConfigPath, e.Value)
	}

	// kernel.yaml: the ConfigMap's, strictly loaded by this binary's loader.
	lookup := func(name string) (string, bool) {
		e, ok := env[name]
		return e.Value, ok && e.ValueFrom == nil
	}
	text := view.configMapFile(t, src, "--config", cfgPath, cm)
	cfg, err := config.Parse([]byte(text), lookup)
	if err != nil {
		t.Fatalf("%s: kernel.yaml of the ConfigMap %s: %v", src, cm.Name, err)
	}
	k := cfg.Kubernetes
	if k == nil {
		t.Fatalf("%s: kernel.yaml has no kubernetes: section", src)
	}
	if len(cfg.Agent.Workloads) > 0 {
		t.Errorf("%s: kernel.yaml lists agent.workloads: one ConfigMap serves every node, and pods are found through the CRI", src)
	}
	for _, want := range []string{"kube-system", ns.Name} {
		if !slices.Contains(k.ExemptNamespaces, want) {
			t.Errorf("%s: kubernetes.exempt_namespaces %v lacks %s", src, k.ExemptNamespaces, want)
		}
	}
	// Every policy a pod can be given, and the agent's own, is a file of
	// the ConfigMap that loads; every other file is one of them.
	used := map[string]bool{filepath.Base(cfgPath): true}
	sources := map[string]string{"policy": cfg.Policy}
	for name, s := range k.Policies {
		sources["kubernetes.policies."+name] = s
	}
	for what, s := range sources {
		p := strings.TrimPrefix(s, "file://")
		if !filepath.IsAbs(p) {
			t.Errorf("%s: %s %q is not a file the ConfigMap mounts", src, what, s)
			continue
		}
		body := view.configMapFile(t, src, what, p, cm)
		if _, err := hushspec.Parse([]byte(body)); err != nil {
			t.Errorf("%s: %s %s: %v", src, what, p, err)
		}
		used[filepath.Base(p)] = true
	}
	for key := range cm.Data {
		if !used[key] {
			t.Errorf("configmap %s: %s is neither kernel.yaml nor a policy it names", cm.Name, key)
		}
	}
	if cfg.Policy == "" {
		t.Errorf("%s: kernel.yaml names no policy: run refuses to start without one", src)
	}

	// Every path kernel.yaml names is where the node's is.
	sec := signingKeyScript(t)
	if sec.namespace != ns.Name {
		t.Errorf("create-signing-key.sh makes the Secret in %s, not %s", sec.namespace, ns.Name)
	}
	for _, img := range sec.images {
		if img != c.Image {
			t.Errorf("create-signing-key.sh runs keygen in %s, not the DaemonSet's image %s", img, c.Image)
		}
	}
	if m, ok := view.at(cfg.SigningKey); !ok || m.vol.Secret == nil {
		t.Errorf("%s: signing_key %s is on no Secret volume", src, cfg.SigningKey)
	} else {
		s := m.vol.Secret
		mode := s.DefaultMode
		key := m.rel
		if len(s.Items) > 0 {
			key = ""
			for _, it := range s.Items {
				if it.Path == m.rel {
					key = it.Key
					if it.Mode != nil {
						mode = it.Mode
					}
				}
			}
		}
		if s.SecretName != sec.name || key != sec.key {
			t.Errorf("%s: signing_key %s is key %q of Secret %s; create-signing-key.sh makes key %q of %s", src, cfg.SigningKey, key, s.SecretName, sec.key, sec.name)
		}
		if mode == nil || *mode&0o077 != 0 {
			t.Errorf("%s: the key file's mode must give group and others nothing (the agent refuses it otherwise): %v", src, mode)
		}
		if s.Optional != nil && *s.Optional {
			t.Errorf("%s: the signing key must not be optional", src)
		}
		if !m.mount.ReadOnly {
			t.Errorf("%s: the key's mount must be read-only", src)
		}
	}
	sink, err := config.ReceiptPath(cfg.Receipts.Sink)
	if err != nil || sink == "" {
		t.Fatalf("%s: receipts.sink %q: %v", src, cfg.Receipts.Sink, err)
	}
	view.hostPath(t, src, "receipts.sink", sink, false)
	pinDir := config.Pick(nil, flagValue(c.Args, "pin-dir"), "", cfg.Agent.PinDir, bpf.DefaultPinDir)
	if m := view.hostPath(t, src, "agent.pin_dir", pinDir, false); m.mount.MountPropagation == nil || *m.mount.MountPropagation != corev1.MountPropagationBidirectional {
		t.Errorf("%s: the pin directory's bpffs must be mounted Bidirectional, so that a bpffs the agent mounts reaches the node and its pins outlive the pod", src)
	}
	view.hostPath(t, src, "the cgroup2 hierarchy", "/sys/fs/cgroup", true)
	view.hostPath(t, src, "a hybrid host's cgroup2 hierarchy", "/sys/fs/cgroup/unified", true)
	if m := view.hostPath(t, src, "the pods' network namespaces", "/var/run/netns/cni-0", true); m.mount.MountPropagation == nil || *m.mount.MountPropagation != corev1.MountPropagationHostToContainer {
		t.Errorf("%s: /var/run/netns must be mounted HostToContainer, or pods made after the agent are not seen", src)
	}
	sockets := config.DefaultCRISockets
	if k.CRISocket != "" {
		sockets = []string{strings.TrimPrefix(k.CRISocket, "unix://")}
	}
	for _, s := range sockets {
		if m := view.hostPath(t, src, "the CRI socket", s, true); m.rel == "" {
			t.Errorf("%s: mount the CRI socket's directory, not the socket: a restarted runtime makes a new one", src)
		}
	}
	for _, v := range pod.Volumes {
		if v.HostPath == nil {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name && filepath.Clean(m.MountPath) != filepath.Clean(v.HostPath.Path) {
				t.Errorf("%s: node path %s mounted at %s", src, v.HostPath.Path, m.MountPath)
			}
		}
	}
	socket := statusSocket(flagValue(c.Args, "status-socket"), cfg)
	if m, ok := view.at(socket); !ok || m.vol.EmptyDir == nil || m.mount.ReadOnly {
		t.Errorf("%s: status socket %s is not on a writable emptyDir", src, socket)
	}
	checkProbe(t, src+" startupProbe", c.StartupProbe, socket)
	checkProbe(t, src+" readinessProbe", c.ReadinessProbe, socket)
	checkProbe(t, src+" livenessProbe", c.LivenessProbe, socket)

	// Resolvers come from the cluster's DNS Service, never an address
	// written here: run reads them from /etc/resolv.conf, where the
	// kubelet writes the cluster DNS for a host-network pod only under
	// ClusterFirstWithHostNet.
	if len(cfg.Agent.Resolvers) > 0 {
		t.Errorf("%s: agent.resolvers %v is a hard-coded address; leave it out and the cluster DNS is taken from /etc/resolv.conf", src, cfg.Agent.Resolvers)
	}
	if pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("%s: dnsPolicy %q: a host-network pod gets the cluster DNS in its resolv.conf only with ClusterFirstWithHostNet", src, pod.DNSPolicy)
	}

	// Metrics: the port kernel.yaml serves is the container port the
	// Service targets by name.
	addr := config.Pick(nil, flagValue(c.Args, "metrics-addr"), "", cfg.Agent.MetricsAddr, "")
	_, portText, err := net.SplitHostPort(addr)
	port, perr := strconv.Atoi(portText)
	if err != nil || perr != nil {
		t.Fatalf("%s: agent.metrics_addr %q is no host:port: %v", src, addr, errors.Join(err, perr))
	}
	var named *corev1.ContainerPort
	for i := range c.Ports {
		if c.Ports[i].Name == "metrics" {
			named = &c.Ports[i]
		}
	}
	if named == nil || int(named.ContainerPort) != port || (named.HostPort != 0 && named.HostPort != named.ContainerPort) {
		t.Errorf("%s: no container port named metrics on %d (agent.metrics_addr %s): %+v", src, port, addr, c.Ports)
	}
	if !selects(svc.Spec.Selector, ds.Spec.Template.Labels) {
		t.Errorf("service %s selects %v, not the agent's pods %v", svc.Name, svc.Spec.Selector, ds.Spec.Template.Labels)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort != intstr.FromString("metrics") {
		t.Errorf("service %s: want one port whose targetPort is the container port's name, metrics: %+v", svc.Name, svc.Spec.Ports)
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("service %s: want headless (clusterIP: None), so that every node's agent is scraped", svc.Name)
	}

	// Memory: above the ceiling the bounds imply.
	l := cfg.Agent.Limits
	ceiling := agent.Limits{HeadBytes: l.HeadBytes, PendingPerWorkload: l.PendingPerWorkload, Pending: l.Pending,
		RelaysPerWorkload: l.RelaysPerWorkload, Relays: l.Relays}.MemoryCeiling()
	want := resource.NewQuantity(ceiling+memoryMargin, resource.BinarySI)
	if got, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || got.Cmp(*want) < 0 {
		t.Errorf("%s: memory limit %v is below the agent's ceiling %d MiB plus %d MiB: the agent would be killed, its pods unreceipted", src, got.String(), ceiling>>20, memoryMargin>>20)
	}
	if _, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		t.Errorf("%s: a CPU limit throttles every connection of the node's pods", src)
	}
}

// TestKubeSigningKeyFromSecretVolume: the key file keygen writes, put in
// the Secret by create-signing-key.sh and laid out by the kubelet as a
// Secret volume (the file behind ..data symlinks, with the DaemonSet's
// mode), is a key file the agent loads; the mode a Secret gets by default
// is one it refuses.
func TestKubeSigningKeyFromSecretVolume(t *testing.T) {
	ms := kubeManifests(t)
	ds, _ := only[*appsv1.DaemonSet](t, ms)
	var mode os.FileMode
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.DefaultMode != nil {
			mode = os.FileMode(*v.Secret.DefaultMode)
		}
	}
	if mode == 0 {
		t.Fatal("daemonset: no Secret volume with a defaultMode")
	}
	sec := signingKeyScript(t)
	dir := t.TempDir()
	seed := filepath.Join(dir, "chio-signing.key")
	key, err := kernel.GenerateKeyFile(seed)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(seed)
	if err != nil {
		t.Fatal(err)
	}
	// The kubelet's atomic writer: a timestamped directory, ..data
	// pointing at it, and each key a symlink through ..data.
	vol := filepath.Join(dir, "volume")
	ts := filepath.Join(vol, "..2026_12_02_05_00_00.000000001")
	if err := os.MkdirAll(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		mode os.FileMode
		ok   bool
	}{{mode, true}, {0o644, false}} {
		f := filepath.Join(ts, sec.key)
		os.Remove(f)
		if err := os.WriteFile(f, b, m.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(f, m.mode); err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(vol, "..data"))
		os.Remove(filepath.Join(vol, sec.key))
		if err := os.Symlink(filepath.Base(ts), filepath.Join(vol, "..data")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", sec.key), filepath.Join(vol, sec.key)); err != nil {
			t.Fatal(err)
		}
		got, err := kernel.LoadKeyFile(filepath.Join(vol, sec.key))
		switch {
		case m.ok && (err != nil || !got.Equal(key)):
			t.Errorf("mode %#o (the DaemonSet's): %v", m.mode, err)
		case !m.ok && !errors.Is(err, kernel.ErrInsecureKeyFile):
			t.Errorf("mode %#o (a Secret's default): %v, want %v", m.mode, err, kernel.ErrInsecureKeyFile)
		}
	}
}

// TestKubeUninstallJob: the Job that removes protection from a node runs
// `uninstall` on that node with the agent's pin directory, and sees the
// node's processes so that it refuses while an agent still runs.
func TestKubeUninstallJob(t *testing.T) {
	ms := kubeManifests(t)
	cm, _ := only[*corev1.ConfigMap](t, ms)
	ds, _ := only[*appsv1.DaemonSet](t, ms)
	job, jobFile := only[*batchv1.Job](t, ms)
	src := "kubernetes/" + jobFile
	if filepath.Dir(jobFile) == "." {
		t.Errorf("%s: keep the Job out of deploy/kubernetes itself, which an operator may apply whole", src)
	}
	pod := &job.Spec.Template.Spec
	if job.GenerateName == "" || job.Name != "" {
		t.Errorf("%s: want generateName (one Job per node and run, made with kubectl create)", src)
	}
	if pod.NodeName != "NODE_NAME" || !strings.Contains(string(readDeploy(t, "kubernetes/"+jobFile)), `s|NODE_NAME|$NODE|`) {
		t.Errorf("%s: the node is named by the placeholder NODE_NAME that the documented sed replaces; nodeName %q", src, pod.NodeName)
	}
	if !tolerateAll(pod.Tolerations) {
		t.Errorf("%s: the Job must run on a node whatever its taints", src)
	}
	if pod.RestartPolicy != corev1.RestartPolicyNever || job.Spec.BackoffLimit == nil || *job.Spec.BackoffLimit != 0 {
		t.Errorf("%s: run once (restartPolicy Never, backoffLimit 0): a refusal is shown, not retried", src)
	}
	if !pod.HostPID {
		t.Errorf("%s: hostPID must be true: uninstall finds a live agent, and live exec runs, among the node's processes", src)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken || pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
		t.Errorf("%s: no ServiceAccount token and no Service variables", src)
	}
	if selects(ds.Spec.Selector.MatchLabels, job.Spec.Template.Labels) {
		t.Errorf("%s: the DaemonSet's selector picks the Job's pod", src)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%s: %d containers", src, len(pod.Containers))
	}
	c := &pod.Containers[0]
	dc := &ds.Spec.Template.Spec.Containers[0]
	if c.Image != dc.Image || !strings.Contains(string(readDeploy(t, "kubernetes/"+jobFile)), `s|`+dc.Image+`|$IMAGE|`) {
		t.Errorf("%s: image %s, the DaemonSet's %s; the documented sed replaces it", src, c.Image, dc.Image)
	}
	if len(c.Command) > 0 && !slices.Equal(c.Command, []string{"/chio-agent"}) {
		t.Errorf("%s: command %q; the image's entrypoint is /chio-agent", src, c.Command)
	}
	checkArgs(t, src+" args", c.Args)
	if len(c.Args) == 0 || c.Args[0] != "uninstall" || slices.Contains(c.Args, "--force") {
		t.Errorf("%s: args %q, want uninstall without --force (it must refuse while an agent runs)", src, c.Args)
	}
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Errorf("%s: detaching and unpinning the node's programs is root's: privileged", src)
	}
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "CHIO_") {
			t.Errorf("%s: %s: uninstall reads only --config", src, e.Name)
		}
	}
	view := podView{spec: pod, container: c}
	cfgPath := flagValue(c.Args, "config")
	cfg, err := config.Parse([]byte(view.configMapFile(t, src, "--config", cfgPath, cm)), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	if dcfg := flagValue(dc.Args, "config"); dcfg != cfgPath {
		t.Errorf("%s: --config %s; the agent reads %s", src, cfgPath, dcfg)
	}
	pinDir := config.Pick(nil, flagValue(c.Args, "pin-dir"), "", cfg.Agent.PinDir, bpf.DefaultPinDir)
	if dp := config.Pick(nil, flagValue(dc.Args, "pin-dir"), "", cfg.Agent.PinDir, bpf.DefaultPinDir); dp != pinDir {
		t.Errorf("%s: pin directory %s; the agent pins under %s", src, pinDir, dp)
	}
	view.hostPath(t, src, "agent.pin_dir", pinDir, false)
	view.hostPath(t, src, "exec runs' pins", agent.ExecPinRoot, false)
	view.hostPath(t, src, "the cgroup2 hierarchy (dead exec runs' cgroups are removed)", "/sys/fs/cgroup", false)
}

// TestKubeKustomization: `kubectl apply -k deploy/kubernetes` applies every
// manifest of the directory but the uninstall Job, with the image the
// DaemonSet and the README name.
func TestKubeKustomization(t *testing.T) {
	var kz struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name    string `json:"name"`
			NewName string `json:"newName,omitempty"`
			NewTag  string `json:"newTag,omitempty"`
		} `json:"images"`
	}
	if err := sigsyaml.UnmarshalStrict(readDeploy(t, "kubernetes/kustomization.yaml"), &kz); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if kz.APIVersion != "kustomize.config.k8s.io/v1beta1" || kz.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: %s/%s", kz.APIVersion, kz.Kind)
	}
	entries, err := os.ReadDir(filepath.Join(deployDir(t), "kubernetes"))
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".yaml") && e.Name() != "kustomization.yaml" {
			files = append(files, e.Name())
		}
	}
	got := slices.Sorted(slices.Values(kz.Resources))
	if !slices.Equal(got, files) {
		t.Errorf("kustomization.yaml resources %v; the directory's manifests are %v", got, files)
	}
	ms := kubeManifests(t)
	ds, _ := only[*appsv1.DaemonSet](t, ms)
	image := ds.Spec.Template.Spec.Containers[0].Image
	name, tag, _ := strings.Cut(image, ":")
	if len(kz.Images) != 1 || kz.Images[0].Name != name || kz.Images[0].NewTag != tag || kz.Images[0].NewName != "" {
		t.Errorf("kustomization.yaml images %+v; want the DaemonSet's %s, so that an operator changes it in one place", kz.Images, image)
	}
	// The README builds that image and applies the directory.
	readme, err := os.ReadFile(filepath.Join(filepath.Dir(deployDir(t)), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"docker build -f deploy/node-agent/Dockerfile -t " + image + " .",
		"kubectl apply -k deploy/kubernetes",
		"deploy/kubernetes/create-signing-key.sh",
		"deploy/kubernetes/uninstall/job.yaml",
	} {
		if !bytes.Contains(readme, []byte(want)) {
			t.Errorf("README.md does not say %q", want)
		}
	}
}

// TestKubeDocsCommands: the chio-agent commands the README's Kubernetes
// section and docs/kubernetes.md run in the agent's container are commands
// and flags of this binary.
func TestKubeDocsCommands(t *testing.T) {
	root := filepath.Dir(deployDir(t))
	for _, doc := range []string{"README.md", "docs/kubernetes.md"} {
		b, err := os.ReadFile(filepath.Join(root, doc))
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if doc == "README.md" {
			_, text, _ = strings.Cut(text, "\n## Kubernetes\n")
			text, _, _ = strings.Cut(text, "\n## ")
		}
		n := 0
		inCode := false
		for _, line := range strings.Split(text, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "```") {
				inCode = !inCode
				continue
			}
			_, cmd, ok := strings.Cut(line, "-- /chio-agent ")
			if !inCode || !ok {
				continue
			}
			cmd, _, _ = strings.Cut(cmd, " > ")
			cmd, _, _ = strings.Cut(cmd, " #")
			var args []string
			for _, f := range strings.Fields(cmd) {
				args = append(args, strings.Trim(f, `"'`))
			}
			checkArgs(t, doc, args)
			n++
		}
		if n == 0 {
			t.Errorf("%s: no `kubectl exec ... -- /chio-agent` command found", doc)
		}
	}
}

// TestKubeNodeAgentImage: the image the manifests run is the one
// deploy/node-agent/Dockerfile builds: a static binary at /chio-agent as
// its entrypoint (the distroless base has no shell and no libc), built by a
// Go at least as new as go.mod asks.
func TestKubeNodeAgentImage(t *testing.T) {
	text := string(readDeploy(t, "node-agent/Dockerfile"))
	d := dockerfile(t, "node-agent/Dockerfile")
	if from := d["FROM"]; len(from) != 1 || !strings.Contains(from[0], "distroless/static") {
		t.Errorf("node-agent Dockerfile: final stage FROM %v", from)
	}
	if !regexp.MustCompile(`CGO_ENABLED=0 go build .* -o /out/chio-agent \./cmd/chio-agent`).MatchString(text) {
		t.Error("node-agent Dockerfile: the binary must be built with CGO_ENABLED=0 (a static binary) from ./cmd/chio-agent")
	}
	if cp := d["COPY"]; len(cp) != 1 || !strings.HasSuffix(cp[0], "/out/chio-agent /chio-agent") {
		t.Errorf("node-agent Dockerfile: COPY %v, want the binary at /chio-agent", cp)
	}
	m := regexp.MustCompile(`(?m)^FROM golang:(\d+)\.(\d+)\S* AS build$`).FindStringSubmatch(text)
	gomod, err := os.ReadFile(filepath.Join(filepath.Dir(deployDir(t)), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	gm := regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`).FindSubmatch(gomod)
	if m == nil || gm == nil {
		t.Fatalf("node-agent Dockerfile: no `FROM golang:X.Y AS build` (%v) or go.mod without a go line", m)
	}
	have := [2]int{atoi(t, m[1]), atoi(t, m[2])}
	need := [2]int{atoi(t, string(gm[1])), atoi(t, string(gm[2]))}
	if have[0] < need[0] || have[0] == need[0] && have[1] < need[1] {
		t.Errorf("node-agent Dockerfile builds with Go %d.%d; go.mod needs %d.%d", have[0], have[1], need[0], need[1])
	}
	ms := kubeManifests(t)
	ds, _ := only[*appsv1.DaemonSet](t, ms)
	job, _ := only[*batchv1.Job](t, ms)
	for _, c := range []corev1.Container{ds.Spec.Template.Spec.Containers[0], job.Spec.Template.Spec.Containers[0]} {
		if len(c.Command) == 0 && !slices.Equal(jsonArray(t, "ENTRYPOINT", d["ENTRYPOINT"][0]), []string{"/chio-agent"}) {
			t.Errorf("container %s relies on the image's entrypoint, which is not /chio-agent", c.Name)
		}
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

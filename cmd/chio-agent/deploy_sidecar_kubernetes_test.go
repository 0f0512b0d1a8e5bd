package main

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/backbay-labs/chio-agent/kernel/config"
)

// TestKubeSidecarReplicas: deploy/kubernetes-sidecar/replicas.yaml decodes
// strictly; its headless Service selects the sidecar's pods on the
// sidecar's port and lists pods before they are ready; a StatefulSet
// governed by that Service runs them, the receipt log (and the session
// journal beside it) on a volume of their own from a volumeClaimTemplate;
// the sidecar's environment (POD_NAME and Secrets filled in) resolves to
// one peer per replica, each a pod's stable name under the Service, with
// this pod's as self; and the grace period outlasts the drain and the
// shutdown that follows it.
func TestKubeSidecarReplicas(t *testing.T) {
	var svc *corev1.Service
	var dep *appsv1.StatefulSet
	for i, doc := range splitYAML(t, readDeploy(t, "kubernetes-sidecar/replicas.yaml")) {
		var tm metav1.TypeMeta
		if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
			t.Fatal(err)
		}
		var obj any
		switch tm.APIVersion + "/" + tm.Kind {
		case "v1/Service":
			svc = &corev1.Service{}
			obj = svc
		case "apps/v1/StatefulSet":
			dep = &appsv1.StatefulSet{}
			obj = dep
		default:
			t.Fatalf("document %d: kind %s/%s", i+1, tm.APIVersion, tm.Kind)
		}
		js, err := sigsyaml.YAMLToJSONStrict(doc)
		if err != nil {
			t.Fatal(err)
		}
		if strict, err := sigsjson.UnmarshalStrict(js, obj); err != nil || len(strict) > 0 {
			t.Fatalf("document %d: %v %v", i+1, err, strict)
		}
	}
	if svc == nil || dep == nil {
		t.Fatal("want a Service and a StatefulSet")
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || !svc.Spec.PublishNotReadyAddresses || len(svc.Spec.Ports) != 1 {
		t.Fatalf("Service %s: want headless, publishing not-ready pods, one port: %+v", svc.Name, svc.Spec)
	}
	labels := dep.Spec.Template.Labels
	for k, v := range svc.Spec.Selector {
		if labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the StatefulSet's pods %v", k, v, labels)
		}
	}
	var c *corev1.Container
	for i := range dep.Spec.Template.Spec.Containers {
		if dep.Spec.Template.Spec.Containers[i].Name == "chio-sidecar" {
			c = &dep.Spec.Template.Spec.Containers[i]
		}
	}
	if c == nil {
		t.Fatal("no chio-sidecar container")
	}
	if dep.Spec.ServiceName != svc.Name {
		t.Errorf("StatefulSet serviceName %q; want the headless Service %s (it gives the pods their names)", dep.Spec.ServiceName, svc.Name)
	}
	podName := dep.Name + "-1"
	env := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			v = podName
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			v = strings.Repeat("s", 32)
		case e.ValueFrom != nil:
			t.Fatalf("%s: unexpected source %+v", e.Name, e.ValueFrom)
		}
		env[e.Name] = strings.ReplaceAll(v, "$(POD_NAME)", env["POD_NAME"])
		if strings.HasPrefix(e.Name, "CHIO_") && !slices.Contains(config.SidecarEnv, e.Name) {
			t.Errorf("%s is not a sidecar variable", e.Name)
		}
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	r, err := config.ResolveSessions(lookup, config.Sessions{}, env[config.EnvReceiptSink])
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(int(svc.Spec.Ports[0].Port))
	podDNS := func(pod string) string {
		return net.JoinHostPort(pod+"."+svc.Name+"."+svc.Namespace+".svc.cluster.local", port)
	}
	var want []string
	for i := range int(*dep.Spec.Replicas) {
		want = append(want, podDNS(dep.Name+"-"+strconv.Itoa(i)))
	}
	if r.PeersDNS != "" || !slices.Equal(r.Peers, want) || svc.Namespace != dep.Namespace {
		t.Errorf("peers %v (dns %q); want each replica's stable name %v", r.Peers, r.PeersDNS, want)
	}
	_, listenPort, _ := net.SplitHostPort(env[config.EnvListenAddr])
	if r.Self != podDNS(podName) || listenPort != port || svc.Spec.Ports[0].TargetPort.IntValue() != int(c.Ports[0].ContainerPort) {
		t.Errorf("self %s, listen %s, target %v, container port %d: the ring's entry for this pod must be where it listens", r.Self, env[config.EnvListenAddr], svc.Spec.Ports[0].TargetPort, c.Ports[0].ContainerPort)
	}
	// The receipt log's directory is a claim of the pod's own.
	var mount string
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(env[config.EnvReceiptSink], strings.TrimSuffix(m.MountPath, "/")+"/") {
			mount = m.Name
		}
	}
	claimed := false
	for _, pvc := range dep.Spec.VolumeClaimTemplates {
		claimed = claimed || pvc.Name == mount
	}
	for _, v := range dep.Spec.Template.Spec.Volumes {
		claimed = claimed && v.Name != mount // a pod volume of that name would shadow the claim
	}
	if mount == "" || !claimed {
		t.Errorf("receipt log %s: on volume %q, want one from the StatefulSet's volumeClaimTemplates (the journal beside it must outlive the pod)", env[config.EnvReceiptSink], mount)
	}
	// SIGTERM: the drain, then up to 10s for requests in flight.
	grace := dep.Spec.Template.Spec.TerminationGracePeriodSeconds
	if grace == nil || time.Duration(*grace)*time.Second <= r.DrainTimeout+10*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v; want more than the drain timeout %s and 10s", grace, r.DrainTimeout)
	}
}

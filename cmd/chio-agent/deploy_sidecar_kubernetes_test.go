package main

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/backbay-labs/chio-agent/kernel/config"
)

// TestKubeSidecarReplicas: deploy/kubernetes-sidecar/replicas.yaml decodes
// strictly, its headless Service selects the sidecar's pods on the
// sidecar's port and lists pods before they are ready, and the sidecar's
// environment (POD_IP and Secrets filled in) resolves to replicas from
// that Service's name with this pod as self.
func TestKubeSidecarReplicas(t *testing.T) {
	var svc *corev1.Service
	var dep *appsv1.Deployment
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
		case "apps/v1/Deployment":
			dep = &appsv1.Deployment{}
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
		t.Fatal("want a Service and a Deployment")
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || !svc.Spec.PublishNotReadyAddresses || len(svc.Spec.Ports) != 1 {
		t.Fatalf("Service %s: want headless, publishing not-ready pods, one port: %+v", svc.Name, svc.Spec)
	}
	labels := dep.Spec.Template.Labels
	for k, v := range svc.Spec.Selector {
		if labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the Deployment's pods %v", k, v, labels)
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
	const podIP = "10.1.2.3"
	env := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP":
			v = podIP
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			v = strings.Repeat("s", 32)
		case e.ValueFrom != nil:
			t.Fatalf("%s: unexpected source %+v", e.Name, e.ValueFrom)
		}
		env[e.Name] = strings.ReplaceAll(v, "$(POD_IP)", env["POD_IP"])
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
	host, p, _ := net.SplitHostPort(r.PeersDNS)
	if host != svc.Name+"."+svc.Namespace+".svc.cluster.local" || p != port || svc.Namespace != dep.Namespace {
		t.Errorf("peers %s; want the Service %s.%s's name and port %s", r.PeersDNS, svc.Name, svc.Namespace, port)
	}
	_, listenPort, _ := net.SplitHostPort(env[config.EnvListenAddr])
	if r.Self != net.JoinHostPort(podIP, port) || listenPort != port || svc.Spec.Ports[0].TargetPort.IntValue() != int(c.Ports[0].ContainerPort) {
		t.Errorf("self %s, listen %s, target %v, container port %d: the ring's entry for this pod must be where it listens", r.Self, env[config.EnvListenAddr], svc.Spec.Ports[0].TargetPort, c.Ports[0].ContainerPort)
	}
}

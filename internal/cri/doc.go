// Package cri discovers the pods of a Kubernetes node through the container
// runtime's own gRPC socket (the CRI, runtime/v1: containerd, CRI-O), with no
// access to the API server and no RBAC.
//
// What it owns:
//   - Client: dial the runtime (Socket picks the first of containerd's and
//     CRI-O's sockets that exists, or the one named), and List a snapshot of
//     the pods on the node: namespace, name, UID, labels and annotations (the
//     kubelet copies them into the sandbox config), the sandbox's network
//     namespace path, and the cgroup of the pod and of each container.
//   - Watcher: follow changes, by a short poll of the runtime and, where the
//     runtime offers GetContainerEvents, a resync on every event. The poll is
//     the truth; events only make it sooner.
//   - Pure functions, tested without root: cgroup paths in both drivers
//     (cgroupfs "kubepods/<qos>/pod<uid>/<id>", systemd
//     "kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/
//     cri-containerd-<id>.scope" or "crio-<id>.scope", guaranteed pods
//     directly under kubepods), a systemd slice name expanded to its
//     directory, the cgroup2 line of /proc/PID/cgroup on a unified or hybrid
//     host, and Select, which chooses a pod's policy from kernel.yaml's
//     kubernetes: section.
//
// Cgroup paths here are relative to the cgroup2 mount (cgroupfs.Mount: it is
// /sys/fs/cgroup on a unified host and /sys/fs/cgroup/unified on a hybrid
// one); Abs joins them to it. A cgroup that disappears and reappears under the
// same path is a new cgroup with a new id: callers key state by cgroup id and
// sandbox id, never by path or pod name alone.
//
// Caveat: what the runtime reports is what the kubelet asked for. Labels and
// annotations come from the pod spec, so a pod's own author chooses them; the
// only way out of protection Select offers is an exempt namespace, which the
// cluster's RBAC guards, never a label.
package cri

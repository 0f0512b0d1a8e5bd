package cri

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Driver is the kubelet's and the runtime's cgroup driver.
type Driver string

// The two cgroup drivers.
const (
	DriverCgroupfs Driver = "cgroupfs"
	DriverSystemd  Driver = "systemd"
)

// QoS classes as they appear in cgroup names. A guaranteed pod's cgroup sits
// directly under kubepods, with no QoS level.
const (
	QOSGuaranteed = "guaranteed"
	QOSBurstable  = "burstable"
	QOSBestEffort = "besteffort"
)

// CgroupDir turns an OCI runtime spec's linux.cgroupsPath into a directory
// relative to the cgroup2 mount. Two shapes exist:
//
//	cgroupfs: /kubepods/besteffort/pod<uid>/<id>
//	systemd:  kubepods-besteffort-pod<uid_>.slice:cri-containerd:<id>
//
// The systemd form is slice:prefix:name; the unit is "<prefix>-<name>.scope",
// or name itself when it already names a slice, under the expanded slice.
func CgroupDir(cgroupsPath string) (string, Driver, error) {
	if cgroupsPath == "" {
		return "", "", errors.New("parse cgroupsPath: empty")
	}
	if strings.HasPrefix(cgroupsPath, "/") {
		rel, err := cleanRel(cgroupsPath)
		return rel, DriverCgroupfs, err
	}
	parts := strings.Split(cgroupsPath, ":")
	if len(parts) != 3 {
		return "", "", fmt.Errorf("parse cgroupsPath %q: neither an absolute path nor slice:prefix:name", cgroupsPath)
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice" // runc's default parent
	}
	dir, err := ExpandSlice(slice)
	if err != nil {
		return "", "", fmt.Errorf("parse cgroupsPath %q: %w", cgroupsPath, err)
	}
	var unit string
	switch {
	case strings.HasSuffix(name, ".slice"):
		unit = name
	case prefix == "" || name == "":
		return "", "", fmt.Errorf("parse cgroupsPath %q: empty unit prefix or name", cgroupsPath)
	default:
		unit = prefix + "-" + name + ".scope"
	}
	if strings.ContainsAny(unit, "/\x00") || unit == "." || unit == ".." {
		return "", "", fmt.Errorf("parse cgroupsPath %q: unit %q is not a file name", cgroupsPath, unit)
	}
	return filepath.Join(dir, unit), DriverSystemd, nil
}

// ExpandSlice returns the directory, relative to the cgroup mount, of a
// systemd slice: a-b-c.slice lives at a.slice/a-b.slice/a-b-c.slice, and
// -.slice is the root ("").
func ExpandSlice(slice string) (string, error) {
	base, ok := strings.CutSuffix(slice, ".slice")
	if !ok {
		return "", fmt.Errorf("expand slice %q: not a .slice", slice)
	}
	if base == "-" {
		return "", nil
	}
	if base == "" || strings.ContainsAny(base, "/\x00") || strings.HasPrefix(base, "-") ||
		strings.HasSuffix(base, "-") || strings.Contains(base, "--") {
		return "", fmt.Errorf("expand slice %q: invalid slice name", slice)
	}
	var dir, prefix string
	for _, comp := range strings.Split(base, "-") {
		if prefix != "" {
			prefix += "-"
		}
		prefix += comp
		dir = filepath.Join(dir, prefix+".slice")
	}
	return dir, nil
}

// Kubepods is what a cgroup path under the kubelet's tree says about itself.
type Kubepods struct {
	// Driver is the layout the path was written in.
	Driver Driver
	// Root is the directory holding every pod (relative to the cgroup2
	// mount): "kubepods", "kubepods.slice", or a nested one such as
	// "kubelet/kubepods" under a --cgroup-root.
	Root string
	// QOS is guaranteed, burstable or besteffort.
	QOS string
	// PodUID is the pod's UID with dashes (systemd names carry underscores).
	PodUID string
	// Pod is the pod-level directory.
	Pod string
	// ContainerID is the container (or sandbox) id, empty for the pod level.
	ContainerID string
	// Runtime is the scope prefix under systemd ("cri-containerd", "crio",
	// "crio-conmon", "docker"), empty under cgroupfs.
	Runtime string
}

// ParseKubepods reads a cgroup directory (relative to the cgroup2 mount, as in
// /proc/PID/cgroup) of the kubelet's tree. A path below a container's cgroup
// (a container that made its own sub-cgroups) belongs to that container.
// Anything else (the host, system.slice, the QoS levels themselves) is
// ErrNotKubepods.
func ParseKubepods(rel string) (Kubepods, error) {
	rel = strings.Trim(filepath.Clean("/"+rel), "/")
	comps := strings.Split(rel, "/")
	for i, c := range comps {
		switch {
		case c == "kubepods":
			return parseCgroupfs(comps, i)
		case c == "kubepods.slice" || strings.HasSuffix(c, "-kubepods.slice"):
			return parseSystemd(comps, i)
		}
	}
	return Kubepods{}, fmt.Errorf("parse cgroup %q: %w", rel, ErrNotKubepods)
}

func parseCgroupfs(comps []string, i int) (Kubepods, error) {
	k := Kubepods{Driver: DriverCgroupfs, Root: strings.Join(comps[:i+1], "/"), QOS: QOSGuaranteed}
	j := i + 1
	if j < len(comps) && (comps[j] == QOSBurstable || comps[j] == QOSBestEffort) {
		k.QOS = comps[j]
		j++
	}
	if j >= len(comps) {
		return Kubepods{}, fmt.Errorf("parse cgroup %q: %w (no pod level)", strings.Join(comps, "/"), ErrNotKubepods)
	}
	uid, ok := strings.CutPrefix(comps[j], "pod")
	if !ok || !validUID(uid) {
		return Kubepods{}, fmt.Errorf("parse cgroup %q: %w (%q is not pod<uid>)", strings.Join(comps, "/"), ErrNotKubepods, comps[j])
	}
	k.PodUID = uid
	k.Pod = strings.Join(comps[:j+1], "/")
	if j+1 < len(comps) {
		k.ContainerID = comps[j+1]
	}
	return k, nil
}

func parseSystemd(comps []string, i int) (Kubepods, error) {
	whole := strings.Join(comps, "/")
	p := strings.TrimSuffix(comps[i], ".slice") // "kubepods", or "kubelet-kubepods" nested
	k := Kubepods{Driver: DriverSystemd, Root: strings.Join(comps[:i+1], "/"), QOS: QOSGuaranteed}
	j := i + 1
	if j < len(comps) {
		for _, q := range []string{QOSBurstable, QOSBestEffort} {
			if comps[j] == p+"-"+q+".slice" {
				k.QOS, p = q, p+"-"+q
				j++
				break
			}
		}
	}
	if j >= len(comps) {
		return Kubepods{}, fmt.Errorf("parse cgroup %q: %w (no pod level)", whole, ErrNotKubepods)
	}
	uid, ok := strings.CutPrefix(comps[j], p+"-pod")
	if ok {
		uid, ok = strings.CutSuffix(uid, ".slice")
	}
	uid = strings.ReplaceAll(uid, "_", "-")
	if !ok || !validUID(uid) {
		return Kubepods{}, fmt.Errorf("parse cgroup %q: %w (%q is not %s-pod<uid>.slice)", whole, ErrNotKubepods, comps[j], p)
	}
	k.PodUID = uid
	k.Pod = strings.Join(comps[:j+1], "/")
	if j+1 < len(comps) {
		scope, ok := strings.CutSuffix(comps[j+1], ".scope")
		dash := strings.LastIndexByte(scope, '-')
		if !ok || dash <= 0 || dash == len(scope)-1 {
			return Kubepods{}, fmt.Errorf("parse cgroup %q: %w (%q is not <runtime>-<id>.scope)", whole, ErrNotKubepods, comps[j+1])
		}
		k.Runtime, k.ContainerID = scope[:dash], scope[dash+1:]
	}
	return k, nil
}

// validUID accepts what a pod UID (an RFC 4122 UUID in practice) can be in a
// cgroup name: letters, digits and dashes, at most 64 of them.
func validUID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// Abs joins a directory relative to the cgroup2 mount to the mount; the result
// never leaves the mount.
func Abs(mount, rel string) string {
	return filepath.Join(mount, filepath.Clean("/"+rel))
}

// cleanRel makes an absolute cgroup path relative, refusing ".." so that a
// runtime's answer cannot name a directory outside the hierarchy.
func cleanRel(p string) (string, error) {
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", fmt.Errorf("parse cgroup path %q: a .. component", p)
		}
	}
	return strings.Trim(filepath.Clean(p), "/"), nil
}

// ParseProcCgroup returns the cgroup2 directory (relative to the mount) in the
// text of /proc/PID/cgroup: the "0::" line, present on a unified host and on
// a hybrid one beside the v1 hierarchies' lines.
func ParseProcCgroup(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return cleanRel(p)
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read proc cgroup: %w", err)
	}
	return "", errors.New("read proc cgroup: no cgroup2 (0::) line")
}

// FindRoot returns the directory (relative to the cgroup2 mount) at the root of
// the pods' subtree. configured is kernel.yaml's cgroup_root: "" or "auto"
// takes kubepods.slice (systemd driver) or kubepods (cgroupfs), whichever
// exists, and refuses to guess when both do (a node whose kubelet changed
// drivers keeps the other tree until it reboots: taking the stale one would
// leave every new pod outside the birth root, unrefused until classified);
// anything else names the directory, which must exist.
func FindRoot(mount, configured string) (string, error) {
	if configured != "" && configured != "auto" {
		rel, err := cleanRel("/" + configured)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(filepath.Clean("/"+configured)+"/", mount+"/") {
			rel = strings.Trim(strings.TrimPrefix(filepath.Clean(configured), mount), "/")
		}
		if fi, err := os.Stat(Abs(mount, rel)); err != nil || !fi.IsDir() {
			return "", fmt.Errorf("find pods cgroup root %q under %s: not a directory", configured, mount)
		}
		return rel, nil
	}
	var found []string
	for _, c := range []string{"kubepods.slice", "kubepods"} {
		if fi, err := os.Stat(Abs(mount, c)); err == nil && fi.IsDir() {
			found = append(found, c)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("find pods cgroup root under %s: neither kubepods.slice nor kubepods exists", mount)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("find pods cgroup root under %s: both kubepods.slice (systemd driver) and kubepods (cgroupfs driver) exist, and one is stale", mount)
}

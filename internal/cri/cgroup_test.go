package cri

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const uid = "3f5c2a1e-8d4b-4c6a-9e2f-1b7d0c9a8e65"
const cid = "4e1b7c0d9a2f3e5b6c8d0a1f2e3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b"

func TestCgroupDirBothDrivers(t *testing.T) {
	u := strings.ReplaceAll(uid, "-", "_")
	for _, tc := range []struct {
		in, want string
		driver   Driver
	}{
		{"/kubepods/besteffort/pod" + uid + "/" + cid, "kubepods/besteffort/pod" + uid + "/" + cid, DriverCgroupfs},
		{"/kubepods/pod" + uid + "/" + cid, "kubepods/pod" + uid + "/" + cid, DriverCgroupfs},
		{"kubepods-besteffort-pod" + u + ".slice:cri-containerd:" + cid,
			"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + u + ".slice/cri-containerd-" + cid + ".scope", DriverSystemd},
		{"kubepods-burstable-pod" + u + ".slice:crio:" + cid,
			"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + u + ".slice/crio-" + cid + ".scope", DriverSystemd},
		{"kubepods-pod" + u + ".slice:cri-containerd:" + cid,
			"kubepods.slice/kubepods-pod" + u + ".slice/cri-containerd-" + cid + ".scope", DriverSystemd},
		{"system.slice:docker:abc", "system.slice/docker-abc.scope", DriverSystemd},
		{":runc:abc", "system.slice/runc-abc.scope", DriverSystemd},
		{"kubepods.slice:cri-containerd:kubepods-x.slice", "kubepods.slice/kubepods-x.slice", DriverSystemd},
	} {
		got, d, err := CgroupDir(tc.in)
		if err != nil || got != tc.want || d != tc.driver {
			t.Errorf("CgroupDir(%q) = %q, %s, %v; want %q, %s", tc.in, got, d, err, tc.want, tc.driver)
		}
	}
	for _, bad := range []string{"", "relative/path", "/kubepods/../../etc", "a:b", "a:b:c:d", "notaslice:x:y",
		"kubepods-.slice:x:y", "kubepods.slice::y", "kubepods.slice:x:", "kubepods.slice:x:a/b", "a--b.slice:x:y"} {
		if got, _, err := CgroupDir(bad); err == nil {
			t.Errorf("CgroupDir(%q) = %q, want an error", bad, got)
		}
	}
}

func TestExpandSlice(t *testing.T) {
	for in, want := range map[string]string{
		"-.slice":                          "",
		"kubepods.slice":                   "kubepods.slice",
		"kubepods-besteffort-pod1_2.slice": "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1_2.slice",
	} {
		if got, err := ExpandSlice(in); err != nil || got != want {
			t.Errorf("ExpandSlice(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestParseKubepodsLayouts(t *testing.T) {
	u := strings.ReplaceAll(uid, "-", "_")
	for _, tc := range []struct {
		in   string
		want Kubepods
	}{
		{"kubepods/besteffort/pod" + uid + "/" + cid,
			Kubepods{DriverCgroupfs, "kubepods", QOSBestEffort, uid, "kubepods/besteffort/pod" + uid, cid, ""}},
		{"/kubepods/burstable/pod" + uid,
			Kubepods{DriverCgroupfs, "kubepods", QOSBurstable, uid, "kubepods/burstable/pod" + uid, "", ""}},
		{"kubepods/pod" + uid + "/" + cid + "/nested/deeper", // guaranteed; a container's own sub-cgroup
			Kubepods{DriverCgroupfs, "kubepods", QOSGuaranteed, uid, "kubepods/pod" + uid, cid, ""}},
		{"kubelet/kubepods/besteffort/pod" + uid + "/" + cid, // --cgroup-root=/kubelet (kind)
			Kubepods{DriverCgroupfs, "kubelet/kubepods", QOSBestEffort, uid, "kubelet/kubepods/besteffort/pod" + uid, cid, ""}},
		{"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + u + ".slice/cri-containerd-" + cid + ".scope",
			Kubepods{DriverSystemd, "kubepods.slice", QOSBestEffort, uid,
				"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + u + ".slice", cid, "cri-containerd"}},
		{"kubepods.slice/kubepods-pod" + u + ".slice/crio-" + cid + ".scope",
			Kubepods{DriverSystemd, "kubepods.slice", QOSGuaranteed, uid, "kubepods.slice/kubepods-pod" + u + ".slice", cid, "crio"}},
		{"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + u + ".slice/crio-conmon-" + cid + ".scope",
			Kubepods{DriverSystemd, "kubepods.slice", QOSBurstable, uid,
				"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + u + ".slice", cid, "crio-conmon"}},
		{"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + u + ".slice",
			Kubepods{DriverSystemd, "kubelet.slice/kubelet-kubepods.slice", QOSBestEffort, uid,
				"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + u + ".slice", "", ""}},
	} {
		got, err := ParseKubepods(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseKubepods(%q)\n = %+v, %v\nwant %+v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "/", "system.slice/containerd.service", "user.slice/user-0.slice",
		"kubepods", "kubepods/besteffort", "kubepods.slice/kubepods-besteffort.slice", "kubepods/besteffort/notapod",
		"kubepods/pod", "kubepods/pod" + uid + "!", "kubepods.slice/kubepods-pod" + u + ".slice/noscope",
		"kubepods.slice/kubepods-pod" + u + ".slice/-x.scope", "kubepods.slice/other-pod" + u + ".slice"} {
		if got, err := ParseKubepods(bad); !errors.Is(err, ErrNotKubepods) {
			t.Errorf("ParseKubepods(%q) = %+v, %v; want ErrNotKubepods", bad, got, err)
		}
	}
}

// TestProcCgroupHybrid: on a hybrid host /proc/PID/cgroup lists the v1
// hierarchies first; only the 0:: line names the cgroup2 directory, which
// lives under the unified mount.
func TestProcCgroupHybrid(t *testing.T) {
	text := "12:pids:/kubepods/besteffort/pod" + uid + "/" + cid + "\n" +
		"1:name=systemd:/kubepods/besteffort/pod" + uid + "/" + cid + "\n" +
		"0::/kubepods/besteffort/pod" + uid + "/" + cid + "\n"
	rel, err := ParseProcCgroup(strings.NewReader(text))
	if err != nil || rel != "kubepods/besteffort/pod"+uid+"/"+cid {
		t.Fatalf("ParseProcCgroup = %q, %v", rel, err)
	}
	if got := Abs("/sys/fs/cgroup/unified", rel); got != "/sys/fs/cgroup/unified/kubepods/besteffort/pod"+uid+"/"+cid {
		t.Fatalf("Abs on the hybrid mount = %q", got)
	}
	if got := Abs("/sys/fs/cgroup", "/../../etc"); got != "/sys/fs/cgroup/etc" {
		t.Fatalf("Abs left the mount: %q", got)
	}
	if _, err := ParseProcCgroup(strings.NewReader("12:pids:/x\n")); err == nil {
		t.Fatal("a v1-only file must have no cgroup2 directory")
	}
	if _, err := ParseProcCgroup(strings.NewReader("0::/a/../../b\n")); err == nil {
		t.Fatal("a path with .. must be refused")
	}
}

func TestFindRoot(t *testing.T) {
	mnt := t.TempDir()
	if _, err := FindRoot(mnt, "auto"); err == nil {
		t.Fatal("auto found a root in an empty hierarchy")
	}
	os.MkdirAll(filepath.Join(mnt, "kubepods"), 0o755)
	if r, err := FindRoot(mnt, ""); err != nil || r != "kubepods" {
		t.Fatalf("auto = %q, %v; want kubepods", r, err)
	}
	os.MkdirAll(filepath.Join(mnt, "kubepods.slice"), 0o755)
	if r, err := FindRoot(mnt, "auto"); err == nil {
		t.Fatalf("auto = %q with both kubepods.slice and kubepods; want a refusal to guess", r)
	}
	for _, named := range []string{"kubepods.slice", "kubepods"} {
		if r, err := FindRoot(mnt, named); err != nil || r != named {
			t.Fatalf("FindRoot(%q) beside the other = %q, %v", named, r, err)
		}
	}
	os.Remove(filepath.Join(mnt, "kubepods"))
	if r, err := FindRoot(mnt, "auto"); err != nil || r != "kubepods.slice" {
		t.Fatalf("auto = %q, %v; want kubepods.slice", r, err)
	}
	os.MkdirAll(filepath.Join(mnt, "kubelet", "kubepods"), 0o755)
	for _, named := range []string{"kubelet/kubepods", "/kubelet/kubepods", filepath.Join(mnt, "kubelet/kubepods")} {
		if r, err := FindRoot(mnt, named); err != nil || r != "kubelet/kubepods" {
			t.Fatalf("FindRoot(%q) = %q, %v", named, r, err)
		}
	}
	if _, err := FindRoot(mnt, "missing"); err == nil {
		t.Fatal("a named root that does not exist was accepted")
	}
}

func FuzzParseKubepods(f *testing.F) {
	f.Add("kubepods/besteffort/pod" + uid + "/" + cid)
	f.Add("kubepods.slice/kubepods-pod" + uid + ".slice/crio-" + cid + ".scope")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKubepods(s)
		if err != nil {
			return
		}
		if k.PodUID == "" || k.Pod == "" || !strings.HasPrefix(k.Pod, k.Root+"/") {
			t.Fatalf("ParseKubepods(%q) = %+v: pod level not under the root", s, k)
		}
		if rel, _, err := CgroupDir("/" + s); err == nil && strings.Contains(rel, "..") {
			t.Fatalf("CgroupDir kept ..: %q", rel)
		}
	})
}

package cgroupfs

import (
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	in := `22 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
41 30 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
`
	got, err := parseMountinfo(strings.NewReader(in))
	if err != nil || got != "/sys/fs/cgroup/unified" {
		t.Fatalf("parseMountinfo = %q, %v; want /sys/fs/cgroup/unified", got, err)
	}
	got, err = parseMountinfo(strings.NewReader(`41 30 0:38 / /mnt/cg\040two rw - cgroup2 none rw` + "\n"))
	if err != nil || got != "/mnt/cg two" {
		t.Fatalf("escaped mount point = %q, %v", got, err)
	}
	if _, err := parseMountinfo(strings.NewReader(in[:strings.LastIndex(in[:len(in)-1], "\n")+1])); err != ErrNoCgroup2 {
		t.Fatalf("no cgroup2: err = %v, want ErrNoCgroup2", err)
	}
}

func TestResolve(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/sys/fs/cgroup/unified/a/b", "/sys/fs/cgroup/unified/a/b"},
		{"a/b", "/sys/fs/cgroup/unified/a/b"},
		{"/a/b", "/sys/fs/cgroup/unified/a/b"},
		{"../../etc", "/sys/fs/cgroup/unified/etc"},
	} {
		got, err := Resolve("/sys/fs/cgroup/unified", tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

package bpf_test

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// layoutEnv is a protected cgroup under a parent the programs attach to,
// and an upstream that counts the connections that reach it directly.
type layoutEnv struct {
	pinDir    string
	parent    testutil.Cgroup
	protected testutil.Cgroup
	upstream  netip.AddrPort
	direct    atomic.Int64
}

func newLayoutEnv(t *testing.T) *layoutEnv {
	t.Helper()
	testutil.RequireRoot(t)
	if err := bpf.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		t.Fatalf("ensure bpffs: %v", err)
	}
	e := &layoutEnv{pinDir: testutil.PinDir(t)}
	t.Cleanup(func() { bpf.Uninstall(e.pinDir) })
	e.parent = testutil.NewCgroup(t, "")
	e.protected = testutil.NewCgroup(t, e.parent.Path)
	e.upstream, _ = serveLine(t, "direct", func() { e.direct.Add(1) })
	return e
}

// serveLine serves on a loopback port, answering each connection with line
// (after calling accepted, when set), until closed.
func serveLine(t *testing.T, line string, accepted func()) (netip.AddrPort, func()) {
	t.Helper()
	return testutil.ServeTCP(t, "tcp4", "127.0.0.1:0", func(c net.Conn) {
		if accepted != nil {
			accepted()
		}
		fmt.Fprintf(c, "%s\n", line)
		c.Close()
	})
}

// agentListener stands for an agent's listener: it answers each
// connection with the agent's name, until closed.
func agentListener(t *testing.T, name string) (netip.AddrPort, func()) {
	t.Helper()
	return serveLine(t, name, nil)
}

// load loads and attaches one agent's programs; protect names the listener
// its workload is redirected to (invalid: none yet).
func (e *layoutEnv) load(t *testing.T, edit func(*ebpf.CollectionSpec) error) *bpf.Objects {
	t.Helper()
	o, err := bpf.Load(bpf.Options{PinDir: e.pinDir, EditSpec: edit})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { o.Close() })
	if err := o.AttachCgroup(e.parent.Path); err != nil {
		t.Fatalf("attach: %v", err)
	}
	return o
}

// dial connects from the protected cgroup and returns what answered, or
// "refused"; it fails the test on a connection that reached the upstream
// directly.
func (e *layoutEnv) dial(t *testing.T) string {
	t.Helper()
	out, code, _ := runIn(t, e.protected, e.upstream.String())
	if out == "direct" || e.direct.Load() != 0 {
		t.Fatalf("a protected connection reached the upstream undecided (%q)", out)
	}
	if code == 3 {
		return "refused"
	}
	if code != 0 {
		t.Fatalf("dial: exit %d, %q", code, out)
	}
	return out
}

// linkIDs reads the ids of the links pinned under a pin set's links
// directory, by hook name.
func linkIDs(t *testing.T, o *bpf.Objects) map[string]uint32 {
	t.Helper()
	ids := map[string]uint32{}
	for _, a := range o.Attachments() {
		l, _, err := a.IDs()
		if err != nil {
			t.Fatal(err)
		}
		ids[a.Name] = l
	}
	return ids
}

func pinned(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			out = append(out, strings.TrimPrefix(p, dir+"/"))
		}
		return nil
	})
	return out
}

// TestHandoverAcrossLayouts: an agent whose map layout differs from the
// pinned one's leaves the pinned links (refusing, their agent gone) as they
// are until its own maps hold its state, then swaps each link to its own
// program: the same links (no hook was ever empty), now redirecting to the
// new agent; the old layout's pins are gone. No connection reaches the
// upstream undecided at any step.
func TestHandoverAcrossLayouts(t *testing.T) {
	e := newLayoutEnv(t)
	oldL, _ := agentListener(t, "old")
	old := e.load(t, testutil.OtherLayout)
	if err := old.Protect(e.protected.ID, bpf.Workload{ID: 1, Listen4: oldL}); err != nil {
		t.Fatal(err)
	}
	if got := e.dial(t); got != "old" {
		t.Fatalf("under the old agent: %q", got)
	}
	before := linkIDs(t, old)
	oldLayout := old.LayoutDir()
	old.Close() // the old agent is gone: its listener with it
	if got := e.dial(t); got != "old" {
		// The test's stand-in listener still runs; a real agent's would not.
		t.Fatalf("with no agent: %q", got)
	}

	newL, _ := agentListener(t, "new")
	o := e.load(t, nil)
	if !o.HandoverPending() || len(o.Attachments()) != 0 || len(o.PreviousLayouts()) != 1 {
		t.Fatalf("pending %v, attachments %v, previous %v: want a pending handover and nothing attached",
			o.HandoverPending(), o.Attachments(), o.PreviousLayouts())
	}
	// The new maps are filled, the old programs still decide.
	if err := o.Protect(e.protected.ID, bpf.Workload{ID: 1, Listen4: newL}); err != nil {
		t.Fatal(err)
	}
	if got := e.dial(t); got != "old" {
		t.Fatalf("before the handover: %q; want the old programs' redirect", got)
	}
	if err := o.Handover(); err != nil {
		t.Fatalf("handover: %v", err)
	}
	if got := e.dial(t); got != "new" {
		t.Fatalf("after the handover: %q; want the new agent's listener", got)
	}
	if after := linkIDs(t, o); !maps.Equal(before, after) {
		t.Errorf("links after the handover %v, before %v: want the same links, swapped", after, before)
	}
	for _, a := range o.Attachments() {
		if !a.HandedOver || !strings.HasPrefix(a.PinPath, e.pinDir+"/layout-") {
			t.Errorf("attachment %+v: want handed over and pinned under a layout", a)
		}
	}
	if _, err := os.Stat(oldLayout); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old layout's pins are still there: %v", pinned(t, oldLayout))
	}
	if got := testutil.LayoutDir(t, e.pinDir); got != o.LayoutDir() {
		t.Errorf("pin dir holds %s, want only %s", got, o.LayoutDir())
	}
}

// TestHandoverFailingMidwayKeepsProtection: a handover that stops after
// some links leaves every hook attached, the swapped ones to the new
// programs and the others to the old: the agent that gave up leaves its
// workload refused, never passed. The next agent of the new layout finishes
// the handover.
func TestHandoverFailingMidwayKeepsProtection(t *testing.T) {
	// Before the 3rd link: the redirecting hooks are all old. Before the
	// 9th: connect4 is new, connect6 and sendmsg old.
	for _, failAt := range []int{3, 8} {
		t.Run(fmt.Sprintf("fail before link %d", failAt), func(t *testing.T) {
			e := newLayoutEnv(t)
			oldL, closeOld := agentListener(t, "old")
			old := e.load(t, testutil.OtherLayout)
			if err := old.Protect(e.protected.ID, bpf.Workload{ID: 1, Listen4: oldL}); err != nil {
				t.Fatal(err)
			}
			before := linkIDs(t, old)
			old.Close()
			closeOld()
			if got := e.dial(t); got != "refused" {
				t.Fatalf("with no agent: %q; want refused", got)
			}

			newL, closeNew := agentListener(t, "new")
			o := e.load(t, nil)
			if err := o.Protect(e.protected.ID, bpf.Workload{ID: 1, Listen4: newL}); err != nil {
				t.Fatal(err)
			}
			restore := bpf.FailHandoverAt(failAt)
			err := o.Handover()
			restore()
			if err == nil || !strings.Contains(err.Error(), "injected") {
				t.Fatalf("handover with a fault: %v", err)
			}
			o.Close() // the agent gives up and exits
			closeNew()
			if got := e.dial(t); got != "refused" {
				t.Fatalf("after a failed handover: %q; want refused", got)
			}

			newL2, _ := agentListener(t, "new-again")
			o2 := e.load(t, nil)
			if !o2.HandoverPending() {
				t.Fatal("the next agent sees no pending handover")
			}
			if ws, err := o2.Workloads(); err != nil || ws[e.protected.ID].ID != 1 {
				t.Fatalf("the new layout's maps were not adopted: %v, %v", ws, err)
			}
			if err := o2.Protect(e.protected.ID, bpf.Workload{ID: 1, Listen4: newL2}); err != nil {
				t.Fatal(err)
			}
			if err := o2.Handover(); err != nil {
				t.Fatalf("resumed handover: %v", err)
			}
			if got := e.dial(t); got != "new-again" {
				t.Fatalf("after the resumed handover: %q", got)
			}
			if after := linkIDs(t, o2); !maps.Equal(before, after) {
				t.Errorf("links after the handover %v, before %v: want the same links", after, before)
			}
			if got := testutil.LayoutDir(t, e.pinDir); got != o2.LayoutDir() {
				t.Errorf("pins left: %v", pinned(t, e.pinDir))
			}
			if got := len(o2.PreviousLayouts()); got != 0 {
				t.Errorf("previous layouts after the handover: %d", got)
			}
		})
	}
}

// TestUnversionedPinsMigrated: pins made before layouts were versioned
// (directly under the pin directory) are adopted as this layout's when
// their maps match, moved into its directory (the same links, the same
// maps' contents), and handed over when they do not.
func TestUnversionedPinsMigrated(t *testing.T) {
	for _, tc := range []struct {
		name     string
		edit     func(*ebpf.CollectionSpec) error
		handover bool
	}{
		{"same layout", nil, false},
		{"other layout", testutil.OtherLayout, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newLayoutEnv(t)
			ln, _ := agentListener(t, "agent")
			old := e.load(t, tc.edit)
			if err := old.Protect(e.protected.ID, bpf.Workload{ID: 4, Listen4: ln}); err != nil {
				t.Fatal(err)
			}
			before := linkIDs(t, old)
			layoutDir := old.LayoutDir()
			old.Close()
			unversion(t, e.pinDir, layoutDir)
			if got := e.dial(t); got != "agent" {
				t.Fatalf("unversioned pins: %q", got)
			}

			o, err := bpf.Load(bpf.Options{PinDir: e.pinDir})
			if err != nil {
				t.Fatalf("load over unversioned pins: %v", err)
			}
			t.Cleanup(func() { o.Close() })
			for _, sub := range []string{"maps", "progs"} {
				if _, err := os.Stat(filepath.Join(e.pinDir, sub)); errors.Is(err, os.ErrNotExist) == tc.handover {
					t.Errorf("%s directly under the pin dir after load: %v", sub, err)
				}
			}
			ws, err := o.Workloads()
			if err != nil {
				t.Fatal(err)
			}
			if tc.handover {
				if len(ws) != 0 {
					t.Fatalf("another layout's maps adopted: %v", ws)
				}
				if err := o.Protect(e.protected.ID, bpf.Workload{ID: 4, Listen4: ln}); err != nil {
					t.Fatal(err)
				}
			} else if ws[e.protected.ID].ID != 4 {
				t.Fatalf("migrated maps: %v; want workload 4", ws)
			}
			if err := o.AttachCgroup(e.parent.Path); err != nil {
				t.Fatal(err)
			}
			if o.HandoverPending() != tc.handover {
				t.Fatalf("handover pending: %v, want %v", o.HandoverPending(), tc.handover)
			}
			if err := o.Handover(); err != nil {
				t.Fatal(err)
			}
			if after := linkIDs(t, o); !maps.Equal(before, after) {
				t.Errorf("links %v, before %v: want the same links", after, before)
			}
			if got := e.dial(t); got != "agent" {
				t.Fatalf("after the migration: %q", got)
			}
			if got := testutil.LayoutDir(t, e.pinDir); got != o.LayoutDir() {
				t.Errorf("pin dir holds %s, want only %s", got, o.LayoutDir())
			}
		})
	}
}

// unversion moves a layout's pins to where binaries before versioned
// layouts pinned them: directly under the pin directory.
func unversion(t *testing.T, pinDir, layoutDir string) {
	t.Helper()
	for _, sub := range []string{"maps", "progs", "links"} {
		if err := os.Rename(filepath.Join(layoutDir, sub), filepath.Join(pinDir, sub)); err != nil {
			t.Fatalf("unversion pins: %v", err)
		}
	}
	if err := os.Remove(layoutDir); err != nil {
		t.Fatal(err)
	}
}

// TestHandoverPendingExemptsInOldMaps: while a handover waits, the old
// programs are the ones attached, reading the old maps. The new agent's own
// cgroup, below a birth root the old agent pinned, is refused every socket
// until the new agent exempts it, which it must do in the old maps too, or
// it could not open the listeners it needs before the handover. Uninstall
// then removes both layouts' pins and detaches every link.
func TestHandoverPendingExemptsInOldMaps(t *testing.T) {
	e := newLayoutEnv(t)
	self := testutil.NewCgroup(t, e.parent.Path) // the new agent's pod
	freeDst := freeAddr(t, "tcp4", "127.0.0.1")
	old := e.load(t, testutil.OtherLayout)
	if err := old.SetBirthRoot(e.parent.ID); err != nil {
		t.Fatal(err)
	}
	old.Close()
	if out, _ := runBirth(t, self, freeDst, ""); out != birthRefused {
		t.Fatalf("unclassified under the old agent's birth root: %s; want %s", out, birthRefused)
	}

	o := e.load(t, nil)
	if !o.HandoverPending() {
		t.Fatal("no pending handover")
	}
	if err := o.Exempt(self.ID); err != nil {
		t.Fatalf("exempt while the handover waits: %v", err)
	}
	if out, _ := runBirth(t, self, freeDst, ""); out != birthUntouched {
		t.Fatalf("exempted while the old programs are attached: %s; want %s", out, birthUntouched)
	}
	o.Close()

	removed, err := bpf.Uninstall(e.pinDir)
	if err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	layouts := map[string]bool{}
	for _, p := range removed {
		layouts[strings.Split(strings.TrimPrefix(p, e.pinDir+"/"), "/")[0]] = true
	}
	if len(layouts) != 2 {
		t.Errorf("uninstall removed pins of %v; want both layouts", layouts)
	}
	if _, err := os.Stat(e.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir after uninstall: %v", err)
	}
	if out, code, _ := runIn(t, e.protected, freeDst.String()); code != 3 {
		t.Fatalf("after uninstall: exit %d, %q; want a direct (refused) connect", code, out)
	}
}

// TestUnversionedPinsBesideALayoutHandedOver: an older binary, run after a
// newer one (a downgrade), pinned a second set of links directly under the
// pin directory beside the layout's. The next agent of the layout adopts its
// own maps and links and, at the handover, detaches the older binary's.
func TestUnversionedPinsBesideALayoutHandedOver(t *testing.T) {
	e := newLayoutEnv(t)
	ln, _ := agentListener(t, "agent")
	first := e.load(t, nil)
	if err := first.Protect(e.protected.ID, bpf.Workload{ID: 2, Listen4: ln}); err != nil {
		t.Fatal(err)
	}
	own := linkIDs(t, first)
	first.Close()

	// The older binary's pins, made in a pin dir of its own and moved to
	// where it would have made them.
	olderDir := testutil.PinDir(t)
	t.Cleanup(func() { bpf.Uninstall(olderDir) })
	oldL, _ := agentListener(t, "older")
	older, err := bpf.Load(bpf.Options{PinDir: olderDir, EditSpec: testutil.OtherLayout})
	if err != nil {
		t.Fatal(err)
	}
	if err := older.AttachCgroup(e.parent.Path); err != nil {
		t.Fatal(err)
	}
	if err := older.Protect(e.protected.ID, bpf.Workload{ID: 2, Listen4: oldL}); err != nil {
		t.Fatal(err)
	}
	olderLinks := linkIDs(t, older)
	olderLayout := older.LayoutDir()
	older.Close()
	unversion(t, e.pinDir, olderLayout)

	o := e.load(t, nil)
	if !o.HandoverPending() {
		t.Fatal("no pending handover with the older binary's links attached")
	}
	if err := o.Handover(); err != nil {
		t.Fatal(err)
	}
	if got := linkIDs(t, o); !maps.Equal(got, own) {
		t.Errorf("links %v; want this layout's own %v", got, own)
	}
	for name, id := range olderLinks {
		if l, err := link.NewFromID(link.ID(id)); err == nil {
			l.Close()
			t.Errorf("the older binary's %s link %d is still there", name, id)
		}
	}
	if got := e.dial(t); got != "agent" {
		t.Fatalf("after the handover: %q", got)
	}
	if got := testutil.LayoutDir(t, e.pinDir); got != o.LayoutDir() {
		t.Errorf("pins left: %v", pinned(t, e.pinDir))
	}
}

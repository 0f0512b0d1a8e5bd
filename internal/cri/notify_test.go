package cri

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// waitKick fails the test unless a kick comes (the poll never would: the
// tests' intervals are an hour).
func waitKick(t *testing.T, kick <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-kick:
	case <-time.After(30 * time.Second):
		t.Fatalf("no kick for %s", what)
	}
}

// TestNotifyCgroupsKicksOnPodBirth: a pod's cgroup made under a QoS class's,
// under a QoS class made after the watch began, or straight under the root
// (a guaranteed pod) each kick a listing.
func TestNotifyCgroupsKicksOnPodBirth(t *testing.T) {
	root := testutil.NewCgroup(t, "")
	burstable := filepath.Join(root.Path, "burstable")
	if err := os.Mkdir(burstable, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(burstable) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kick := make(chan struct{}, 1)
	if err := NotifyCgroups(ctx, root.Path, kick); err != nil {
		t.Fatal(err)
	}
	mkdir := func(p string) {
		t.Helper()
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
	}
	mkdir(filepath.Join(burstable, "poda"))
	waitKick(t, kick, "a pod under an existing QoS class")
	besteffort := filepath.Join(root.Path, "besteffort")
	mkdir(besteffort)
	waitKick(t, kick, "a QoS class")
	mkdir(filepath.Join(besteffort, "podb"))
	waitKick(t, kick, "a pod under a QoS class made after the watch began")
	mkdir(filepath.Join(root.Path, "podc"))
	waitKick(t, kick, "a guaranteed pod")
	mkdir(filepath.Join(besteffort, "podb", "sandbox2"))
	waitKick(t, kick, "a sandbox made again in a pod that stays")
	mkdir(filepath.Join(root.Path, "podc", "ctr"))
	waitKick(t, kick, "a guaranteed pod's container")
	if err := NotifyCgroups(ctx, filepath.Join(root.Path, "nosuch"), kick); err == nil {
		t.Fatal("a missing root was accepted")
	}
}

// TestWatcherListsOnKick: with an hour between polls, a kick lists at once,
// and a kick that comes before the runtime lists the pod keeps listing
// until it does.
func TestWatcherListsOnKick(t *testing.T) {
	f, c := newFakeCRI(t)
	f.DisableEvents()
	lists := f.CountLists(64)
	kick := make(chan struct{}, 1)
	w := &Watcher{Client: c, Interval: time.Hour, Kick: kick}
	got := make(chan []Change, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func(ch []Change) { got <- ch }) }()
	defer func() { cancel(); <-done }()
	if first := <-got; len(first) != 0 {
		t.Fatalf("first sync of an empty runtime: %+v", first)
	}

	addPod(f, "s1", "ns", "a", fakeUID, "/kubepods/burstable/pod"+fakeUID, "/var/run/netns/x")
	kick <- struct{}{}
	select {
	case ch := <-got:
		if len(ch) != 1 || ch[0].Kind != PodAdded || ch[0].Pod.SandboxID != "s1" {
			t.Fatalf("after a kick: %+v", ch)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a kick did not list")
	}

	// The cgroup appears before the runtime lists the sandbox: the kick's
	// first listing finds nothing new, a later one of its burst does.
	drain(lists)
	kick <- struct{}{}
	<-lists // the kick's first listing
	<-lists // and one of its retries: still nothing new
	addPod(f, "s2", "ns", "b", fakeUID+"2", "/kubepods/burstable/podb", "/var/run/netns/y")
	select {
	case ch := <-got:
		if len(ch) != 1 || ch[0].Pod.SandboxID != "s2" {
			t.Fatalf("burst: %+v", ch)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a kick's retries did not find a pod listed after its first listing")
	}
}

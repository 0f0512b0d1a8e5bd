package agent

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/cri"
	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
)

// kubeBenchPods is how many pods one round of BenchmarkKubeClassify starts.
const kubeBenchPods = 50

// BenchmarkKubeClassify measures, on the test containerd, how long a new pod
// waits to be classified and what a protected pod costs the agent. Each
// round starts kubeBenchPods pods at once (churnParallel at a time through
// the CRI, as a kubelet starting a node's pods does), each connecting from
// its first instant, waits for all to be protected and answered, then
// removes them. Per pod:
//
//   - sandbox→protected: from RunPodSandbox's return (the pod's cgroup and
//     netns exist) to the moment the agent classified it as protected (its
//     PodStatus.Since, taken on the agent's clock, in this process);
//   - start→protected: from the return of its last StartContainer to that
//     moment; negative when the pod was protected before its container ran
//     (the agent protects a pod by its sandbox);
//   - the floors: the pod's own start (RunPodSandbox called to
//     StartContainer returned), and one CRI listing of the node's pods
//     (the agent classifies a pod after the listing that shows it);
//   - attempts refused in the kernel before the pod was classified (from
//     the containers' logs);
//   - per protected pod, with every pod running against before: Go heap
//     (the whole process after GC: the agent, and the harness's few
//     structs per pod), RSS, BPF map memory (memlock, as fdinfo reports it)
//     and the bytes of the map entries the pod added, open fds, goroutines.
//
// The sub-benchmarks run with the test's poll interval and with the
// default (containerd 1.6 sends no container events: the agent finds a new
// pod by polling).
func BenchmarkKubeClassify(b *testing.B) {
	for _, poll := range []time.Duration{100 * time.Millisecond, time.Second} {
		b.Run("poll="+poll.String(), func(b *testing.B) { benchKubeClassify(b, poll) })
	}
}

func benchKubeClassify(b *testing.B, poll time.Duration) {
	ns := fmt.Sprintf("bench-%d", poll.Milliseconds())
	rt, srv, kd := kubeFixture(b, ns, poll)
	client, err := cri.Dial(context.Background(), rt.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()

	var sbLat, startLat, podStart, listing []time.Duration
	var refused, protectedBefore int
	var perPod []memDelta
	var memlock float64 // every pinned map's, with only the anchor pod
	b.ResetTimer()
	for round := range b.N {
		before := kubeMemory(b, kd)
		memlock = before.bpfMemlock
		specs := make([]containerd.PodSpec, kubeBenchPods)
		for i := range specs {
			name := fmt.Sprintf("p%d-%d", round, i)
			specs[i] = containerd.PodSpec{Namespace: ns, Name: name, Command: untilAnswered(srv.addr, "/"+ns+"/"+name, sleepForever)}
		}
		pods := rt.RunPods(b, churnParallel, specs...)
		since := map[string]time.Time{}
		waitFor(b, "every pod protected", func() bool {
			for _, p := range queryStatus(b, kd.sock).Pods {
				if p.State == string(StateProtected) {
					since[p.UID] = p.Since
				}
			}
			for _, p := range pods {
				if _, ok := since[p.UID]; !ok {
					return false
				}
			}
			return true
		})
		waitAnswered(b, pods...)
		for _, p := range pods {
			sbLat = append(sbLat, since[p.UID].Sub(p.SandboxAt))
			d := since[p.UID].Sub(p.StartedAt)
			startLat = append(startLat, d)
			if d < 0 {
				protectedBefore++
			}
			podStart = append(podStart, p.StartedAt.Sub(p.RequestedAt))
			r, _ := attempts(b, p.Spec.Name, readLog(b, p.LogPath("main")))
			refused += r
		}
		for range 5 {
			t0 := time.Now()
			if _, err := client.List(context.Background()); err != nil {
				b.Fatal(err)
			}
			listing = append(listing, time.Since(t0))
		}
		during := kubeMemory(b, kd)
		perPod = append(perPod, during.minus(before, kubeBenchPods))
		containerd.RemovePods(b, churnParallel, pods...)
		waitFor(b, "the pods gone from status", func() bool { return len(queryStatus(b, kd.sock).Pods) == 1 })
	}
	b.StopTimer()

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(percentile(sbLat, 50)), "sandbox-to-protected-p50-ms")
	b.ReportMetric(ms(percentile(sbLat, 99)), "sandbox-to-protected-p99-ms")
	b.ReportMetric(ms(percentile(startLat, 50)), "start-to-protected-p50-ms")
	b.ReportMetric(ms(percentile(startLat, 99)), "start-to-protected-p99-ms")
	b.ReportMetric(ms(percentile(podStart, 50)), "pod-start-p50-ms")
	b.ReportMetric(ms(percentile(listing, 50)), "cri-listing-p50-ms")
	m := meanDelta(perPod)
	b.ReportMetric(m.heap/1024, "heap-KiB/pod")
	b.ReportMetric(m.rss/1024, "rss-KiB/pod")
	b.ReportMetric(m.bpfMemlock, "bpf-memlock-B/pod")
	b.ReportMetric(m.bpfEntries, "bpf-entry-B/pod")
	b.ReportMetric(m.fds, "fds/pod")
	b.ReportMetric(m.goroutines, "goroutines/pod")
	b.ReportMetric(0, "ns/op") // a round's wall time says nothing: the metrics above do
	load, _ := os.ReadFile("/proc/loadavg")
	b.Logf("%d pods (%d rounds): sandbox→protected p50 %v p99 %v; start→protected p50 %v p99 %v (%d of %d protected before their container started); "+
		"pod start p50 %v p99 %v; one CRI listing of %d pods p50 %v; %d attempts refused in the kernel before classification; "+
		"per protected pod: heap %.1f KiB, RSS %.1f KiB, BPF memlock %.0f B (%.1f MiB for every map, with one pod), BPF entries %.0f B, %.1f fds, %.1f goroutines; load average %s",
		len(sbLat), b.N, percentile(sbLat, 50), percentile(sbLat, 99), percentile(startLat, 50), percentile(startLat, 99), protectedBefore, len(startLat),
		percentile(podStart, 50), percentile(podStart, 99), kubeBenchPods+1, percentile(listing, 50), refused,
		m.heap/1024, m.rss/1024, m.bpfMemlock, memlock/(1<<20), m.bpfEntries, m.fds, m.goroutines, strings.TrimSpace(string(load)))
}

// percentile is the nearest-rank percentile (p99 of 50 samples is the
// largest).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// kubeMem is what the agent's process and its pinned maps hold at one
// moment.
type kubeMem struct {
	heap, rss, bpfMemlock, bpfEntries, fds, goroutines float64
}

// memDelta is a kubeMem difference per pod.
type memDelta = kubeMem

func (m kubeMem) minus(o kubeMem, n int) memDelta {
	f := float64(n)
	return memDelta{heap: (m.heap - o.heap) / f, rss: (m.rss - o.rss) / f, bpfMemlock: (m.bpfMemlock - o.bpfMemlock) / f,
		bpfEntries: (m.bpfEntries - o.bpfEntries) / f, fds: (m.fds - o.fds) / f, goroutines: (m.goroutines - o.goroutines) / f}
}

func meanDelta(ds []memDelta) memDelta {
	var s memDelta
	for _, d := range ds {
		s.heap += d.heap
		s.rss += d.rss
		s.bpfMemlock += d.bpfMemlock
		s.bpfEntries += d.bpfEntries
		s.fds += d.fds
		s.goroutines += d.goroutines
	}
	n := float64(max(1, len(ds)))
	return memDelta{s.heap / n, s.rss / n, s.bpfMemlock / n, s.bpfEntries / n, s.fds / n, s.goroutines / n}
}

// kubeMemory measures the process (after a GC) and the pinned maps: the
// memlock fdinfo reports for each (what the kernel charges it: fixed for a
// preallocated map, growing with the entries of one that is not), and the
// bytes of its entries (key and value sizes times the count).
func kubeMemory(b *testing.B, kd *kubeDaemon) kubeMem {
	b.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := kubeMem{heap: float64(ms.HeapAlloc), rss: float64(statusKiB(b, "VmRSS")) * 1024, goroutines: float64(runtime.NumGoroutine())}
	for _, pm := range pinnedMaps(b, kd.pinDir) {
		m.bpfMemlock += float64(pm.memlock)
		m.bpfEntries += float64(pm.entryBytes)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		b.Fatal(err)
	}
	m.fds = float64(len(ents))
	return m
}

// statusKiB reads a "Name: N kB" line of /proc/self/status.
func statusKiB(b *testing.B, name string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	b.Fatalf("no %s in /proc/self/status", name)
	return 0
}

package agent

import (
	"bytes"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/internal/cri"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/containerd"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

// Pod lifecycle on a real containerd: churn leaves nothing behind, a pod
// made again under the same name is a new pod, and a container restarted in
// a tight loop never connects undecided.

// churnParallel is how many pods the tests start or remove at once: the CRI
// serves them concurrently, and two shared cores bound what more would gain.
const churnParallel = 8

// pathServer serves HTTP on the pods' gateway address and counts, by path,
// the connections it accepted: each pod asks for a path of its own. A path
// ending in -hold is answered with a status line and then held open until
// the client goes.
type pathServer struct {
	addr     netip.AddrPort
	mu       sync.Mutex
	accepted map[string]int
}

func newPathServer(t testing.TB, rt *containerd.Runtime) *pathServer {
	t.Helper()
	a4 := rt.Subnet.Addr().As4()
	gw := netip.AddrFrom4([4]byte{a4[0], a4[1], a4[2], 1})
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(gw, 0).String())
	if err != nil {
		t.Fatalf("listen on the pods' gateway: %v", err)
	}
	return servePaths(t, ln)
}

// servePaths is a pathServer on ln, until the test ends.
func servePaths(t testing.TB, ln net.Listener) *pathServer {
	s := &pathServer{addr: ln.Addr().(*net.TCPAddr).AddrPort(), accepted: map[string]int{}}
	body := bodyHandler("kube-api")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.accepted[r.URL.Path]++
		s.mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "-hold") {
			// Held open until the client goes.
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		body.ServeHTTP(w, r)
	})}
	srv.SetKeepAlivesEnabled(false)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

// kubeFixture starts, in its own namespace, a pod that stays (the pods'
// gateway exists once a pod is up), a pathServer on the gateway, and the
// daemon with pod discovery (poll: the CRI poll interval, 0 for the tests'
// 100 ms).
func kubeFixture(t testing.TB, ns string, poll time.Duration) (*containerd.Runtime, *pathServer, *kubeDaemon) {
	t.Helper()
	rt := containerd.Shared(t)
	rt.RunPod(t, containerd.PodSpec{Namespace: ns, Name: "anchor"})
	srv := newPathServer(t, rt)
	kd := newKubeDaemon(t, rt, "not-a-pod", srv.addr.Addr())
	kd.poll = poll
	kd.start()
	return rt, srv, kd
}

func (s *pathServer) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted[path]
}

// untilAnswered is a container command that connects to srv from its first
// instant, asking for path and printing each result, until an HTTP answer
// comes back (the server's, or the agent's 403), then runs then (a shell
// command: sleep, or exit).
func untilAnswered(srv netip.AddrPort, path, then string) []string {
	return []string{"/bin/busybox", "sh", "-c", fmt.Sprintf(`i=0
while [ $i -lt 500 ]; do
out=$(/bin/busybox printf 'GET %s HTTP/1.0\r\nHost: api.allowed.test\r\n\r\n' | /bin/busybox nc %s %d 2>&1)
echo "result: $out" | /bin/busybox tr '\r\n' '  '; echo
case "$out" in *HTTP/1.*) break;; esac
i=$((i+1)); /bin/busybox usleep 20000
done
if [ $i -lt 500 ]; then echo answered; fi
%s`, path, srv.Addr(), srv.Port(), then)}
}

const sleepForever = "exec /bin/busybox sleep 2147483"

// readLog reads a container log ("" while it does not exist).
func readLog(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// waitAnswered waits for each pod's main container (its current attempt)
// to print that it was answered (untilAnswered).
func waitAnswered(t testing.TB, pods ...*containerd.Pod) {
	t.Helper()
	waitFor(t, "the pods' connections answered", func() bool {
		for _, p := range pods {
			if !strings.Contains(readLog(t, p.LogPath("main")), "answered") {
				return false
			}
		}
		return true
	})
}

// attempts checks each connection attempt a container log shows: refused in
// the kernel (EPERM) or answered over HTTP, never anything else (a
// connection that went nowhere, or a reset); also an error in alsoRefused,
// counted as refused. It returns the attempts refused and the last answer.
func attempts(t testing.TB, who, log string, alsoRefused ...string) (refused int, last string) {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		_, res, ok := strings.Cut(line, "result: ")
		switch {
		case !ok:
		case strings.Contains(res, "Operation not permitted"):
			refused++
		case slices.ContainsFunc(alsoRefused, func(e string) bool { return strings.Contains(res, e) }):
			refused++
		case strings.Contains(res, "HTTP/1."):
			last = res
		default:
			t.Errorf("%s: an attempt neither refused in the kernel nor answered: %q", who, line)
		}
	}
	return refused, last
}

// decisions counts a workload's decisions by verdict, and checks that each
// receipt names the pod's UID.
func (kd *kubeDaemon) decisions(t testing.TB, workload, uid string) (allowed, denied int) {
	t.Helper()
	kd.mu.Lock()
	defer kd.mu.Unlock()
	for _, d := range kd.decided {
		if d.Workload != workload {
			continue
		}
		if d.Verdict == kernel.VerdictAllow {
			allowed++
		} else {
			denied++
		}
		if ent, err := kd.log.Get(d.Seq); err != nil || !strings.Contains(string(ent.Receipt), uid) {
			t.Errorf("%s: receipt %d does not name pod %s: %v", workload, d.Seq, uid, err)
		}
	}
	return allowed, denied
}

// holdings are what the agent holds that pods can make grow, by name.
type holdings map[string]int

// atMost are the holdings back at or below their baseline, not equal to it:
// the process's, which the test's own work moves too (its server, its CRI
// client); the container identities, which name only containers whose
// cgroup exists (running); the kernel's refusal keys, which age out within
// about a second.
func atMost(key string) bool {
	switch key {
	case "goroutines", "agent: container identities", "bpf map: refusals", "status: refusal keys":
		return true
	}
	return strings.HasPrefix(key, "open fds: ")
}

// holdings counts the agent's per-pod state: what status shows, the maps of
// pod discovery, the registry and the listeners, every pinned BPF hash map,
// the process's open fds by kind and its goroutines, and its threads left in
// a network namespace not its own.
func (kd *kubeDaemon) holdings(t testing.TB) holdings {
	t.Helper()
	h := holdings{}
	s := queryStatus(t, kd.sock)
	h["status: pods"] = len(s.Pods)
	h["status: workloads"] = len(s.Workloads)
	h["status: listeners"] = len(s.Listeners)
	h["status: errors"] = len(s.Errors)
	if s.Birth != nil {
		h["status: exempt cgroups"] = len(s.Birth.Exempt)
	}
	h["status: refusal keys"] = s.Maps.RefusalKeys
	h["status: pending originals"] = s.Maps.PendingOriginals
	h["status: established originals"] = s.Maps.EstablishedOriginals

	kd.mu.Lock()
	a := kd.agent
	kd.mu.Unlock()
	a.mu.Lock()
	h["agent: listeners"] = len(a.listeners)
	kc := a.kube
	byContainer := 0
	for _, w := range a.reg.all() {
		byContainer += len(w.byContainer)
	}
	h["agent: container identities"] = byContainer
	a.mu.Unlock()
	a.reg.mu.RLock()
	h["registry: ids"], h["registry: names"] = len(a.reg.ids), len(a.reg.names)
	a.reg.mu.RUnlock()
	kc.mu.Lock()
	h["kube: pods"], h["kube: owners"] = len(kc.pods), len(kc.owner)
	kc.mu.Unlock()
	a.proxy.idle.mu.Lock()
	h["proxy: idle relays"] = len(a.proxy.idle.pairs)
	a.proxy.idle.mu.Unlock()
	a.proxy.overflow.mu.Lock()
	h["proxy: overflow entries"] = len(a.proxy.overflow.m)
	a.proxy.overflow.mu.Unlock()

	// Arrays have a fixed size, and the LRU maps (cg_cache,
	// inbound_refused, orig_by_tuple) are bounded caches keyed by ids never
	// reused, whose stale entries are evicted, not leaked.
	for name, m := range pinnedMaps(t, kd.pinDir) {
		if m.typ == ebpf.Hash || m.typ == ebpf.LPMTrie {
			h["bpf map: "+name] = m.entries
		}
	}
	for kind, n := range openFDs(t) {
		h["open fds: "+kind] = n
	}
	h["goroutines"] = runtime.NumGoroutine()
	h["threads in another netns"] = threadsAway(t)
	return h
}

// pinnedMap is one pinned map: its type, entries, the bytes of those
// entries (key and value sizes times the count) and the memlock fdinfo
// reports for it (what the kernel charges: fixed for a preallocated map,
// growing with the entries of one that is not).
type pinnedMap struct {
	typ                          ebpf.MapType
	entries, entryBytes, memlock int
}

// pinnedMaps reads every map pinned in pinDir.
func pinnedMaps(t testing.TB, pinDir string) map[string]pinnedMap {
	t.Helper()
	dir := filepath.Join(testutil.LayoutDir(t, pinDir), "maps")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]pinnedMap{}
	for _, e := range ents {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, e.Name()), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("open pinned map %s: %v", e.Name(), err)
		}
		pm := pinnedMap{typ: m.Type(), memlock: fdinfoField(t, m.FD(), "memlock")}
		switch m.Type() {
		case ebpf.Hash, ebpf.LPMTrie, ebpf.LRUHash:
			k, v := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
			for it := m.Iterate(); it.Next(&k, &v); {
				pm.entries++
			}
			pm.entryBytes = pm.entries * int(m.KeySize()+m.ValueSize())
		}
		out[e.Name()] = pm
		m.Close()
	}
	return out
}

// fdinfoField reads a numeric field of an fd's fdinfo.
func fdinfoField(t testing.TB, fd int, name string) int {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

var bracketed = regexp.MustCompile(`\[[0-9]+\]`)

// openFDs counts the process's open file descriptors by what they are
// (socket, anon_inode:bpf-map, net (a netns handle), a file's path).
func openFDs(t testing.TB) map[string]int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the fd ReadDir itself used, closed since
		}
		kind := bracketed.ReplaceAllString(target, "")
		if strings.HasPrefix(kind, "anon_inode:") {
			// A link made is a "bpf_link", one opened from its pin a
			// "bpf-link": the same kind.
			kind = strings.ReplaceAll(kind, "_", "-")
		}
		out[kind]++
	}
	return out
}

// threadsAway counts the process's threads in a network namespace other
// than its main thread's: a thread left in a pod's netns.
func threadsAway(t testing.TB) int {
	t.Helper()
	own, err := os.Readlink(fmt.Sprintf("/proc/self/task/%d/ns/net", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, task := range tasks {
		if ns, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns", "net")); err == nil && ns != own {
			n++
		}
	}
	return n
}

// goroutineStacks counts the process's goroutines by the function each
// runs, to name those that grew.
func goroutineStacks() map[string]int {
	var b bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	out := map[string]int{}
	for _, block := range strings.Split(b.String(), "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		if len(lines) < 2 {
			continue
		}
		count, _, ok := strings.Cut(lines[0], " @ ")
		n, err := strconv.Atoi(count)
		if !ok || err != nil {
			continue
		}
		var fns []string
		for _, l := range lines[1:] {
			if fs := strings.Fields(l); len(fs) >= 3 && fs[0] == "#" {
				fn, _, _ := strings.Cut(fs[2], "+0x")
				fns = append(fns, fn)
			}
		}
		// By its outermost frames (the function it runs), wherever it is
		// blocked.
		out[strings.Join(fns[max(0, len(fns)-2):], " < ")] += n
	}
	return out
}

// grown names each holding that is above its baseline (or, for the
// agent's own state, different from it).
func grown(base, now holdings) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(now)) {
		b, n := base[k], now[k]
		if n > b || (n != b && !atMost(k)) {
			out = append(out, fmt.Sprintf("%s: %d, baseline %d", k, n, b))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(base)) {
		if _, ok := now[k]; !ok && !atMost(k) && base[k] != 0 {
			out = append(out, fmt.Sprintf("%s: 0, baseline %d", k, base[k]))
		}
	}
	return out
}

// backToBaseline waits (up to half a minute: the agent follows the runtime
// by polling, and closed sockets take a moment to leave) for every holding
// to be back at its baseline, and fails naming each one that is not, and
// the goroutine stacks that grew.
func (kd *kubeDaemon) backToBaseline(t *testing.T, base holdings, baseStacks map[string]int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var diff []string
	for {
		runtime.GC() // finalizers close what was dropped unclosed: not a leak of the agent's
		if diff = grown(base, kd.holdings(t)); len(diff) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, d := range diff {
		t.Errorf("not back to baseline: %s", d)
		if strings.HasPrefix(d, "status: errors") {
			for _, e := range queryStatus(t, kd.sock).Errors {
				t.Logf("agent error: %+v", e)
			}
		}
	}
	if len(diff) > 0 {
		fds := func(h holdings) string {
			var out []string
			for _, k := range slices.Sorted(maps.Keys(h)) {
				if strings.HasPrefix(k, "open fds: ") {
					out = append(out, fmt.Sprintf("%s=%d", strings.TrimPrefix(k, "open fds: "), h[k]))
				}
			}
			return strings.Join(out, " ")
		}
		t.Logf("open fds at the baseline: %s", fds(base))
		t.Logf("open fds now: %s", fds(kd.holdings(t)))
		now := goroutineStacks()
		for _, k := range slices.Sorted(maps.Keys(now)) {
			if now[k] > baseStacks[k] {
				t.Errorf("goroutines grew: %d, baseline %d: %s", now[k], baseStacks[k], k)
			}
		}
	}
}

// churnPod is one pod of the churn and what it should meet.
type churnPod struct {
	spec     containerd.PodSpec
	path     string
	workload string // "" for an exempt pod
	// refuseAll: its label names no policy; every connection refused.
	refuseAll bool
	// hold: once answered, it holds a connection open (path + "-hold")
	// through the agent until it is deleted.
	hold bool
}

// churnPods are n pods of every kind pod discovery tells apart: protected
// by the default policy (most, in three namespaces), exempt (kube-system),
// refused everything (a label naming no policy), one on the host network.
// Each connects from its first instant until answered; one in ten then
// holds a connection open through the agent.
func churnPods(srv netip.AddrPort, prefix string, n int) []churnPod {
	out := make([]churnPod, n)
	for i := range out {
		name := fmt.Sprintf("%s-%d", prefix, i)
		cp := churnPod{path: "/" + name, spec: containerd.PodSpec{Namespace: fmt.Sprintf("churn-%c", 'a'+i%3), Name: name}}
		switch {
		case i%10 == 0:
			cp.spec.Namespace = "kube-system"
		case i%10 == 1:
			cp.spec.Labels = map[string]string{config.PolicyLabel: "nosuch"}
			cp.refuseAll = true
		case i == 2:
			cp.spec.HostNetwork = true
		case i%10 == 3:
			cp.hold = true
		}
		if cp.spec.Namespace != "kube-system" {
			cp.workload = cp.spec.Namespace + "/" + name
		}
		then := sleepForever
		if cp.hold {
			then = fmt.Sprintf(`/bin/busybox printf 'GET %s-hold HTTP/1.0\r\nHost: api.allowed.test\r\n\r\n' | /bin/busybox nc %s %d
%s`, cp.path, srv.Addr(), srv.Port(), sleepForever)
		}
		cp.spec.Command = untilAnswered(srv, cp.path, then)
		out[i] = cp
	}
	return out
}

// runChurn starts the pods, waits for each to be answered, and checks what
// each met: a protected pod's attempts refused in the kernel or decided,
// each connection the server accepted allowed by a decision naming the pod;
// a refuse-all pod denied, never reaching the server; an exempt pod reaching
// the server undecided.
func runChurn(t *testing.T, kd *kubeDaemon, rt *containerd.Runtime, srv *pathServer, cps []churnPod) []*containerd.Pod {
	t.Helper()
	specs := make([]containerd.PodSpec, len(cps))
	for i, cp := range cps {
		specs[i] = cp.spec
	}
	pods := rt.RunPods(t, churnParallel, specs...)
	checkChurn(t, kd, srv, cps, pods)
	return pods
}

// checkChurn waits for each pod to be answered and checks what it met, as
// runChurn says.
func checkChurn(t *testing.T, kd *kubeDaemon, srv *pathServer, cps []churnPod, pods []*containerd.Pod) {
	t.Helper()
	waitAnswered(t, pods...)
	for i, cp := range cps {
		p := pods[i]
		who := cp.spec.Namespace + "/" + cp.spec.Name
		_, last := attempts(t, who, readLog(t, p.LogPath("main")))
		accepted := srv.count(cp.path)
		switch {
		case cp.workload == "":
			if !strings.Contains(last, "kube-api") || accepted == 0 {
				t.Errorf("%s (exempt): last answer %q, %d accepted", who, last, accepted)
			}
			if a, d := kd.decisions(t, who, p.UID); a+d > 0 {
				t.Errorf("%s (exempt): decided %d times", who, a+d)
			}
		case cp.refuseAll:
			if !strings.Contains(last, "403") || accepted != 0 {
				t.Errorf("%s (refused everything): last answer %q, %d accepted by the server", who, last, accepted)
			}
		default:
			if !strings.Contains(last, "kube-api host=api.allowed.test") {
				t.Errorf("%s: last answer %q", who, last)
			}
			if cp.hold {
				waitFor(t, who+"'s held connection at the server", func() bool { return srv.count(cp.path+"-hold") == 1 })
				accepted++
			}
			waitFor(t, "an allow decision for each connection "+who+" made", func() bool {
				allowed, _ := kd.decisions(t, cp.workload, p.UID)
				return allowed >= accepted
			})
		}
	}
}

// TestKubePodChurn: 50 pods of every kind are created (concurrently, as a
// node's kubelet does) and deleted (some ended first as the kubelet ends a
// pod) while the agent runs, each connecting from its first instant, one in
// ten then holding a connection open through the agent until it is deleted.
// Every attempt is refused in the kernel or decided (the exempt pods' reach
// the server), and afterwards everything the agent holds per pod is back to
// its baseline: status (pods, workloads, listeners, exempt cgroups), pod
// discovery's maps, the registry, the listeners, every pinned BPF map, the
// process's open fds by kind (sockets, netns handles, BPF objects), its
// goroutines, and no thread left in a pod's netns. A holding that grew fails
// the test by name.
func TestKubePodChurn(t *testing.T) {
	rt, srv, kd := kubeFixture(t, "churn-a", 0)

	// One round of each kind first: what the agent makes once (the watch
	// of the QoS directory, its CRI connection, pools) is in the baseline.
	warm := runChurn(t, kd, rt, srv, churnPods(srv.addr, "warm", 3))
	containerd.RemovePods(t, churnParallel, warm...)
	waitFor(t, "the warm-up pods gone from status", func() bool { return len(queryStatus(t, kd.sock).Pods) == 1 })
	base := kd.holdings(t)
	baseStacks := goroutineStacks()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heap0 := ms.HeapAlloc

	const n = 50
	cps := churnPods(srv.addr, "churn", n)
	t0 := time.Now()
	pods := runChurn(t, kd, rt, srv, cps)
	started := time.Since(t0)

	// The measures see the pods: each holding a pod makes grew by it.
	// One listener per protected pod's netns, the host-network pod's the
	// node's own.
	protected, exempt := 0, 0
	for _, cp := range cps {
		if cp.workload == "" {
			exempt++
		} else {
			protected++
		}
	}
	waitFor(t, "every pod classified", func() bool {
		s := queryStatus(t, kd.sock)
		ok := 0
		for _, p := range s.Pods {
			if p.State == string(StateProtected) || p.State == PodExempt {
				ok++
			}
		}
		return ok == n+1
	})
	during := kd.holdings(t)
	for _, c := range []struct {
		key  string
		want int
	}{
		{"status: pods", n}, {"kube: pods", n}, {"status: workloads", protected}, {"registry: ids", protected},
		{"kube: owners", protected}, {"bpf map: workloads", protected}, {"bpf map: guards", protected},
		{"agent: listeners", protected}, {"status: exempt cgroups", exempt}, {"bpf map: birth_exempt", exempt},
	} {
		if got := during[c.key] - base[c.key]; got != c.want {
			t.Errorf("with %d pods running, %s grew by %d, want %d", n, c.key, got, c.want)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	t.Logf("%d pods (%d protected, %d exempt) started and answered in %v; heap %+d KiB (whole test process)",
		n, protected, exempt, started.Round(time.Millisecond), (int64(ms.HeapAlloc)-int64(heap0))>>10)

	// A fifth of the pods end as the kubelet ends a pod (the sandbox
	// stopped, the pod cgroup removed, the sandbox removed later), the
	// others are removed at once.
	t1 := time.Now()
	for i := 0; i < len(pods); i += 5 {
		pods[i].Terminate(t)
	}
	containerd.RemovePods(t, churnParallel, pods...)
	kd.backToBaseline(t, base, baseStacks)
	t.Logf("%d pods removed and the agent back to its baseline in %v", n, time.Since(t1).Round(time.Millisecond))
}

// TestKubePodReappears: a pod made again under the same namespace and name
// is a new pod. Made while the old one still runs (a forced deletion), the
// new one takes the workload over: its connections are decided with
// receipts naming its UID, the old one's are refused in the kernel (it is
// classified no more), and removing the old one leaves the new one
// protected. Deleted and made again, it is protected under its new cgroup.
// Its sandbox made again by the kubelet (same UID and pod cgroup, a new
// netns), protection follows into the new netns and the old netns's
// listener is released. Ended and run again with the same UID (a static
// pod), its pod cgroup made again at the same path is a new cgroup,
// protected anew.
func TestKubePodReappears(t *testing.T) {
	mount, err := cgroupfs.Mount()
	if err != nil {
		t.Fatal(err)
	}
	rt, srv, kd := kubeFixture(t, "again", 0)
	base := queryStatus(t, kd.sock)
	const name = "again/web"

	// protectedAs waits for the workload to protect pod p's cgroup, and
	// returns its status.
	protectedAs := func(p *containerd.Pod) WorkloadStatus {
		t.Helper()
		var w WorkloadStatus
		waitFor(t, name+" protecting pod "+p.UID, func() bool {
			s := queryStatus(t, kd.sock)
			for _, x := range s.Workloads {
				if x.Name == name && x.Pod != nil && x.Pod.SandboxID == p.SandboxID && x.State == StateProtected &&
					x.Cgroup == cri.Abs(mount, p.CgroupParent) && len(x.Pod.Containers) == 1 {
					w = x
					return true
				}
			}
			return false
		})
		return w
	}
	// decided checks that p's connection goes through the agent, allowed,
	// with a receipt naming p.
	decided := func(p *containerd.Pod, path string) {
		t.Helper()
		kd.mu.Lock()
		before := len(kd.decided)
		kd.mu.Unlock()
		out, _, _ := p.Exec(t, "main", "/bin/busybox", "sh", "-c", fmt.Sprintf(
			`/bin/busybox printf 'GET %s-exec HTTP/1.0\r\nHost: api.allowed.test\r\n\r\n' | /bin/busybox nc %s %d`, path, srv.addr.Addr(), srv.addr.Port()))
		if !strings.Contains(out, "kube-api host=api.allowed.test") {
			t.Fatalf("pod %s: %q", p.UID, out)
		}
		waitFor(t, "the decision of pod "+p.UID, func() bool {
			kd.mu.Lock()
			defer kd.mu.Unlock()
			for _, d := range kd.decided[before:] {
				if d.Workload != name || d.Verdict != kernel.VerdictAllow {
					continue
				}
				ent, err := kd.log.Get(d.Seq)
				return err == nil && strings.Contains(string(ent.Receipt), p.UID)
			}
			return false
		})
	}
	// answeredInNewNetns checks the attempts of a pod whose sandbox was made
	// again with the pod cgroup's path: until the agent has moved the pod's
	// workload to the new netns, that path is still protected with the old
	// netns's listener port (its cgroup made again is protected again at
	// once, bypath.go), so an attempt is redirected to that port on the new
	// netns's loopback, where nothing listens: refused (fail closed), but by
	// the loopback, with no receipt.
	answeredInNewNetns := func(p *containerd.Pod) {
		t.Helper()
		waitAnswered(t, p)
		if n, _ := attempts(t, p.Spec.Name, readLog(t, p.LogPath("main")), "Connection refused"); n > 0 {
			t.Logf("sandbox attempt %d: %d attempts refused before the agent moved its workload to the new netns", p.Spec.Attempt, n)
		}
	}
	spec := func(uid string, attempt uint32, path string) containerd.PodSpec {
		return containerd.PodSpec{Namespace: "again", Name: "web", UID: uid, Attempt: attempt,
			Command: untilAnswered(srv.addr, path, sleepForever)}
	}

	first := rt.RunPod(t, spec("", 0, "/first"))
	w1 := protectedAs(first)
	decided(first, "/first")

	// Forced deletion: the API server forgot the old pod, its containers
	// still run, and a new pod of the same name starts.
	second := rt.RunPod(t, spec("", 0, "/second"))
	w2 := protectedAs(second)
	if w2.CgroupID == w1.CgroupID || w2.Pod.UID == first.UID {
		t.Fatalf("the new pod kept the old one's cgroup or UID: %+v", w2)
	}
	waitAnswered(t, second)
	attempts(t, "the new pod", readLog(t, second.LogPath("main")))
	decided(second, "/second")
	if out, _ := podGet(t, first, srv.addr, "api.allowed.test"); strings.Contains(out, "kube-api") || !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("the old pod, still running beside the new one of its name: %q (want refused in the kernel)", out)
	}
	// Status says so: the old sandbox is no longer the pod's.
	for _, p := range queryStatus(t, kd.sock).Pods {
		if p.UID == first.UID && (p.State != PodStopped || p.Workload != "") {
			t.Errorf("the old pod in status, beside the new one of its name: %+v (want %s, no workload)", p, PodStopped)
		}
	}

	// The old pod removed: the new one stays protected.
	first.Remove(t)
	waitFor(t, "the old pod gone from status", func() bool {
		for _, p := range queryStatus(t, kd.sock).Pods {
			if p.UID == first.UID {
				return false
			}
		}
		return true
	})
	if w := protectedAs(second); w.ID != w2.ID {
		t.Fatalf("after the old pod's removal: %+v, before %+v", w, w2)
	}
	decided(second, "/second-after")

	// Deleted, then made again: a new pod, protected under its new cgroup.
	second.Remove(t)
	third := rt.RunPod(t, spec("", 0, "/third"))
	w3 := protectedAs(third)
	if w3.CgroupID == w2.CgroupID || !w3.Pod.Since.After(w2.Pod.Since) || w3.Pod.UID != third.UID {
		t.Fatalf("the pod made again: %+v, before: %+v", w3, w2)
	}
	waitAnswered(t, third)
	attempts(t, "the third pod", readLog(t, third.LogPath("main")))
	decided(third, "/third")

	// The kubelet makes the sandbox again: the old one stopped, a new one
	// with the same UID (same pod-level cgroup) in a new netns.
	third.Stop(t)
	remade := rt.RunPod(t, spec(third.UID, 1, "/remade"))
	w4 := protectedAs(remade)
	if w4.Netns == w3.Netns || w4.Netns == "" || w4.Cgroup != w3.Cgroup {
		t.Fatalf("the sandbox made again: %+v, before: %+v", w4, w3)
	}
	answeredInNewNetns(remade)
	decided(remade, "/remade")
	third.RemoveSandbox(t)
	waitFor(t, "one pod of the name left, its listener alone", func() bool {
		s := queryStatus(t, kd.sock)
		return len(s.Pods) == len(base.Pods)+1 && proxyListeners(s) == proxyListeners(base)+2 && len(s.Workloads) == len(base.Workloads)+1
	})
	decided(remade, "/remade-after")

	// A static pod (its UID is its manifest's hash) ends and runs again: its
	// pod cgroup is removed and made again at the same path, a new cgroup,
	// protected anew.
	remade.Terminate(t)
	static := rt.RunPod(t, spec(third.UID, 2, "/static"))
	w5 := protectedAs(static)
	if w5.Cgroup != w4.Cgroup || w5.CgroupID == w4.CgroupID {
		t.Fatalf("the pod cgroup made again at its path: %+v, before: %+v", w5, w4)
	}
	answeredInNewNetns(static)
	decided(static, "/static")
	remade.RemoveSandbox(t)

	// Every connection the server accepted from the pods was allowed by a
	// decision.
	accepted := 0
	for _, path := range []string{"/first", "/second", "/third", "/remade", "/static"} {
		accepted += srv.count(path) + srv.count(path+"-exec")
	}
	accepted += srv.count("/second-after-exec") + srv.count("/remade-after-exec")
	if allowed, _ := kd.decisions(t, name, ""); allowed < accepted {
		t.Errorf("the server accepted %d connections from the pods, %d were allowed by a decision", accepted, allowed)
	}
}

// TestKubeContainerRestartLoop: a container that connects from its first
// instant and exits, restarted by the kubelet in a tight loop (a new
// container cgroup each time, under the same pod), never connects
// undecided, and the restarts leave nothing behind: one workload with one
// container identity, one listener, the maps as with one start.
func TestKubeContainerRestartLoop(t *testing.T) {
	rt, srv, kd := kubeFixture(t, "loop", 0)
	const name = "loop/crasher"
	p := rt.RunPod(t, containerd.PodSpec{Namespace: "loop", Name: "crasher",
		Command: untilAnswered(srv.addr, "/crasher", "exit 1")})
	waitAnswered(t, p)
	waitFor(t, "the pod protected with its container", func() bool {
		w := workloadIn(t, queryStatus(t, kd.sock), name)
		return w.Pod != nil && len(w.Pod.Containers) == 1
	})
	first := kd.holdings(t)
	id := workloadIn(t, queryStatus(t, kd.sock), name).ID

	const restarts = 12
	var logs []string
	logs = append(logs, p.LogPath("main"))
	for range restarts {
		p.RestartContainer(t, "main") // at once: most attempts are cut short
		logs = append(logs, p.LogPath("main"))
	}
	waitAnswered(t, p)
	refused := 0
	for i, l := range logs {
		r, _ := attempts(t, fmt.Sprintf("attempt %d", i), readLog(t, l))
		refused += r
	}
	accepted := srv.count("/crasher")
	waitFor(t, "an allow decision for each connection the server accepted", func() bool {
		allowed, _ := kd.decisions(t, name, p.UID)
		return allowed >= accepted
	})
	t.Logf("%d restarts: %d connections accepted (each decided), %d attempts refused in the kernel", restarts, accepted, refused)

	waitFor(t, "the pod's last container named", func() bool {
		w := workloadIn(t, queryStatus(t, kd.sock), name)
		return w.Pod != nil && len(w.Pod.Containers) == 1 && w.State == StateProtected
	})
	if w := workloadIn(t, queryStatus(t, kd.sock), name); w.ID != id {
		t.Errorf("the workload changed id across restarts: %d, then %d", id, w.ID)
	}
	kd.backToBaseline(t, first, goroutineStacks())
}

// TestKubePodsRemovedWhileDown: pods deleted while no agent runs leave
// nothing behind once it runs again, whichever way they ended: removed at
// once, or ended as the kubelet ends a pod (the sandbox stopped and the
// pod-level cgroup removed while the agent ran, the sandbox removed later,
// while it was down: only the path's guard then names the workload in the
// pinned state). Protected, exempt and refused-everything pods alike. Pods
// of every kind made while no agent runs, connecting from their first
// instant, are all refused in the kernel (the exempt one too: nothing has
// classified it), never passed, and once the agent runs again each meets
// what its kind should.
func TestKubePodsRemovedWhileDown(t *testing.T) {
	rt, srv, kd := kubeFixture(t, "down", 0)
	base := kd.holdings(t)
	baseStacks := goroutineStacks()

	pods := rt.RunPods(t, churnParallel,
		containerd.PodSpec{Namespace: "down", Name: "removed"},
		containerd.PodSpec{Namespace: "down", Name: "ended"},
		containerd.PodSpec{Namespace: "kube-system", Name: "down-exempt"},
		containerd.PodSpec{Namespace: "down", Name: "refused", Labels: map[string]string{config.PolicyLabel: "nosuch"}})
	waitFor(t, "the pods classified", func() bool {
		ok := 0
		for _, p := range queryStatus(t, kd.sock).Pods {
			if p.State == string(StateProtected) || p.State == PodExempt {
				ok++
			}
		}
		return ok == 5
	})
	pods[1].Terminate(t)
	waitFor(t, "the ended pod's workload waiting for its cgroup", func() bool {
		return workloadIn(t, queryStatus(t, kd.sock), "down/ended").State == StateWaiting
	})
	kd.stop()
	containerd.RemovePods(t, churnParallel, pods...)

	// Pods of every kind made while no agent runs, each connecting from
	// its first instant: all refused in the kernel, the exempt one too
	// (nothing has classified it), until the agent runs again.
	cps := churnPods(srv.addr, "born-down", 4)
	specs := make([]containerd.PodSpec, len(cps))
	for i, cp := range cps {
		specs[i] = cp.spec
	}
	born := rt.RunPods(t, churnParallel, specs...)
	waitFor(t, "each pod made while no agent runs refused twice", func() bool {
		for _, p := range born {
			out := readLog(t, p.LogPath("main"))
			if strings.Contains(out, "answered") {
				t.Fatalf("%s was answered while no agent ran: %s", p.Spec.Name, out)
			}
			if strings.Count(out, "Operation not permitted") < 2 {
				return false
			}
		}
		return true
	})
	for _, cp := range cps {
		if n := srv.count(cp.path); n != 0 {
			t.Fatalf("%s reached the server %d times while no agent ran", cp.spec.Name, n)
		}
	}
	kd.start()
	checkChurn(t, kd, srv, cps, born)
	containerd.RemovePods(t, churnParallel, born...)
	kd.backToBaseline(t, base, baseStacks)
}

// proxyListeners counts the proxy's listeners in status (IPv4 and IPv6 per
// namespace), leaving out the DNS listeners beside them.
func proxyListeners(s Status) int {
	n := 0
	for _, l := range s.Listeners {
		if l.Kind == "proxy" {
			n++
		}
	}
	return n
}

// Package natscluster starts a three-server JetStream cluster of Debian's
// nats-server (scripts/deps test installs it) for tests: every server on
// random loopback ports, its store in a temporary directory, each one a
// child process a test can kill and restart on the same ports and store.
//
// Real servers cost seconds to start and to elect a JetStream leader, so
// tests that do not kill servers share one cluster per test binary
// (Shared); a test that kills servers starts its own (Start).
package natscluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// Size is the number of servers of a cluster.
const Size = 3

// readyTimeout bounds how long a (re)started cluster may take to serve
// JetStream.
const readyTimeout = 60 * time.Second

// Cluster is a running (or partly stopped) cluster.
type Cluster struct {
	bin    string
	dir    string
	ports  [Size]int // client ports
	routes [Size]int // cluster ports
	mu     sync.Mutex
	procs  [Size]*exec.Cmd
	waits  [Size]chan struct{}
	logs   [Size]string
	Token  string // the client token every server requires (when no NKey)
	opts   Options
}

// Options change how a cluster's servers admit clients.
type Options struct {
	// NKey, when set, is the one user public key (U...) admitted, instead
	// of the token.
	NKey string
	// CertFile and KeyFile, when set, make every client port TLS-only with
	// this certificate (clients then connect with tls://).
	CertFile, KeyFile string
}

// Binary finds nats-server: on PATH, else Debian's /usr/sbin. A missing one
// skips t (fails it under CI=true).
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nats-server"); err == nil {
		return "/usr/sbin/nats-server"
	}
	testutil.Skip(t, "nats-server is not installed (scripts/deps test installs it)")
	return ""
}

// Start starts a fresh cluster for t and stops it when t ends.
func Start(t testing.TB) *Cluster {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith starts a fresh cluster with o for t and stops it when t ends.
// Its own readiness check needs the token: with an NKey, WaitReady only
// waits for the client ports; the test checks JetStream itself.
func StartWith(t testing.TB, o Options) *Cluster {
	t.Helper()
	c, err := start(Binary(t), t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.StopAll)
	return c
}

var (
	sharedOnce sync.Once
	shared     *Cluster
	sharedErr  error
)

// Shared is one cluster for the whole test binary, started by its first
// caller; tests using it must not stop its servers, and must use subjects
// and streams of their own. The test binary's TestMain is
// os.Exit(natscluster.Main(m)), which stops it after the tests (a server
// also dies with the test binary: Pdeathsig).
func Shared(t testing.TB) *Cluster {
	t.Helper()
	bin := Binary(t)
	sharedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "natscluster-")
		if err != nil {
			sharedErr = err
			return
		}
		shared, sharedErr = start(bin, dir, Options{})
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

// Main runs the test binary's tests, then stops the shared cluster, if one
// was started, and removes its stores; it returns the exit code:
//
//	func TestMain(m *testing.M) { os.Exit(natscluster.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	stopShared()
	return code
}

func stopShared() {
	if shared != nil {
		shared.StopAll()
		os.RemoveAll(shared.dir)
	}
}

// start starts a cluster in dir. A server that cannot join (its port
// taken between the pick and its start, seen in CI as a cluster that never
// places a stream of Size replicas) fails the attempt; the cluster is then
// started again on new ports and fresh stores, up to three times.
func start(bin, dir string, o Options) (*Cluster, error) {
	var errs []error
	for attempt := range 3 {
		c, err := startOnce(bin, filepath.Join(dir, fmt.Sprintf("a%d", attempt)), o)
		if err == nil {
			return c, nil
		}
		errs = append(errs, fmt.Errorf("attempt %d: %w", attempt+1, err))
	}
	return nil, errors.Join(errs...)
}

// clusterPort picks a loopback port that is free now, below the kernel's
// ephemeral range (32768 and up), so that no client connection of another
// test can take it before the server listens.
func clusterPort() (int, error) {
	for range 100 {
		p := 10000 + rand.IntN(22000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			l.Close()
			return p, nil
		}
	}
	return testutil.FreePort()
}

func startOnce(bin, dir string, o Options) (*Cluster, error) {
	c := &Cluster{bin: bin, dir: dir, Token: "chio-test-token", opts: o}
	for i := 0; i < Size; i++ {
		var err error
		if c.ports[i], err = clusterPort(); err != nil {
			return nil, err
		}
		if c.routes[i], err = clusterPort(); err != nil {
			return nil, err
		}
	}
	for i := 0; i < Size; i++ {
		if err := c.writeConfig(i); err != nil {
			return nil, err
		}
	}
	for i := 0; i < Size; i++ {
		if err := c.spawn(i); err != nil {
			c.StopAll()
			return nil, err
		}
	}
	if err := c.waitReady(30 * time.Second); err != nil {
		var logs []string
		for i := 0; i < Size; i++ {
			l := c.Log(i)
			logs = append(logs, fmt.Sprintf("n%d: %s", i, l[max(0, len(l)-600):]))
		}
		c.StopAll()
		return nil, fmt.Errorf("%w; servers' logs (ends): %s", err, strings.Join(logs, " | "))
	}
	return c, nil
}

func (c *Cluster) writeConfig(i int) error {
	var routes []string
	for j := 0; j < Size; j++ {
		if j != i {
			routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", c.routes[j]))
		}
	}
	store := filepath.Join(c.dir, fmt.Sprintf("n%d", i), "store")
	if err := os.MkdirAll(store, 0o700); err != nil {
		return fmt.Errorf("make nats store: %w", err)
	}
	auth := fmt.Sprintf("authorization { token: %q }", c.Token)
	if c.opts.NKey != "" {
		auth = fmt.Sprintf("authorization { users: [ { nkey: %q } ] }", c.opts.NKey)
	}
	if c.opts.CertFile != "" {
		auth += fmt.Sprintf("\ntls { cert_file: %q, key_file: %q }", c.opts.CertFile, c.opts.KeyFile)
	}
	conf := fmt.Sprintf(`server_name: n%d
listen: 127.0.0.1:%d
%s
jetstream { store_dir: %q, max_memory_store: 64MB, max_file_store: 1GB }
cluster {
  name: chio-test
  listen: 127.0.0.1:%d
  routes: [%s]
}
`, i, c.ports[i], auth, store, c.routes[i], strings.Join(routes, ", "))
	return os.WriteFile(c.confPath(i), []byte(conf), 0o600)
}

func (c *Cluster) confPath(i int) string {
	return filepath.Join(c.dir, fmt.Sprintf("n%d", i), "nats.conf")
}

func (c *Cluster) spawn(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.procs[i] != nil {
		return nil
	}
	c.logs[i] = filepath.Join(c.dir, fmt.Sprintf("n%d", i), "server.log")
	cmd := exec.Command(c.bin, "-c", c.confPath(i), "-l", c.logs[i])
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := testutil.StartChild(cmd); err != nil {
		return fmt.Errorf("start nats-server n%d: %w", i, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	c.procs[i], c.waits[i] = cmd, done
	return nil
}

// URL is server i's client URL.
func (c *Cluster) URL(i int) string { return fmt.Sprintf("nats://127.0.0.1:%d", c.ports[i]) }

// URLs are every server's client URL, comma-separated, as a sink names
// them (without the token).
func (c *Cluster) URLs() string {
	var us []string
	for i := 0; i < Size; i++ {
		us = append(us, c.URL(i))
	}
	return strings.Join(us, ",")
}

// Log returns server i's log file, for a failing test to print.
func (c *Cluster) Log(i int) string {
	b, _ := os.ReadFile(c.logs[i])
	return string(b)
}

// Kill SIGKILLs server i and waits for it to die.
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	cmd, done := c.procs[i], c.waits[i]
	c.procs[i] = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
}

// Restart starts server i again on its ports and store.
func (c *Cluster) Restart(i int) error { return c.spawn(i) }

// StopAll kills every server.
func (c *Cluster) StopAll() {
	for i := 0; i < Size; i++ {
		c.Kill(i)
	}
}

// StartAll starts every stopped server and waits for JetStream.
func (c *Cluster) StartAll() error {
	for i := 0; i < Size; i++ {
		if err := c.spawn(i); err != nil {
			return err
		}
	}
	return c.WaitReady()
}

// Connect opens a client connection to the cluster (every server's URL,
// the cluster's token); the test closes it.
func (c *Cluster) Connect() (*nats.Conn, error) {
	return nats.Connect(c.URLs(), nats.Token(c.Token), nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond), nats.Timeout(2*time.Second))
}

// WaitReady waits until the cluster answers JetStream account requests and
// places a stream of Size replicas: polling, bounded by a minute.
func (c *Cluster) WaitReady() error { return c.waitReady(readyTimeout) }

func (c *Cluster) waitReady(within time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var last error
	for {
		if last = c.ping(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for nats cluster: %w (last: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) ping(ctx context.Context) error {
	if c.opts.NKey != "" || c.opts.CertFile != "" {
		// The harness holds neither seed nor CA: a port that accepts is
		// all it checks.
		for i := 0; i < Size; i++ {
			conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.ports[i]), time.Second)
			if err != nil {
				return err
			}
			conn.Close()
		}
		return nil
	}
	nc, err := c.Connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := js.AccountInfo(actx)
	if err != nil {
		return err
	}
	if info == nil {
		return errors.New("no account info")
	}
	// A meta leader answers account requests before it has heard from
	// every server, and until it has, a stream of Size replicas is refused
	// ("no suitable peers for placement"). Ready means one can be placed.
	probe := jetstream.StreamConfig{Name: "NATSCLUSTER_READY_PROBE", Subjects: []string{"natscluster.ready.probe"},
		Replicas: Size, Storage: jetstream.MemoryStorage}
	if _, err := js.CreateOrUpdateStream(actx, probe); err != nil {
		return fmt.Errorf("place a stream of %d replicas: %w", Size, err)
	}
	return js.DeleteStream(actx, probe.Name)
}

// StreamInfo is stream's info, or nil and the error while it cannot be
// read (not created yet, no leader).
func (c *Cluster) StreamInfo(stream string) (*jetstream.StreamInfo, error) {
	nc, err := c.Connect()
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	return st.Info(ctx)
}

// WaitStreamCurrent waits, up to a minute, until stream has a leader and
// every one of its replicas is current: a server restarted on its store
// has caught up with what was stored while it was down. A test reads the
// stream only then.
func (c *Cluster) WaitStreamCurrent(t testing.TB, stream string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		info, err := c.StreamInfo(stream)
		if err == nil && info.Cluster != nil && info.Cluster.Leader != "" && len(info.Cluster.Replicas) == info.Config.Replicas-1 {
			current := true
			for _, r := range info.Cluster.Replicas {
				current = current && r.Current && !r.Offline && r.Lag == 0
			}
			if current {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream %s: replicas not current after a minute: %+v %v", stream, info, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Messages reads every message stream holds, in stream order; any error
// fails t.
func (c *Cluster) Messages(t testing.TB, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	nc, err := c.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("read stream %s: %v", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("read stream %s: %v", stream, err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("read stream %s message %d: %v", stream, seq, err)
		}
		out = append(out, m)
	}
	return out
}

// CPUTime is the CPU time (user and system) the running servers have used
// so far, read from /proc, for benchmarks that say where the time goes.
func (c *Cluster) CPUTime() (time.Duration, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var total time.Duration
	for _, cmd := range c.procs {
		if cmd == nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
		if err != nil {
			return 0, fmt.Errorf("read nats-server cpu time: %w", err)
		}
		// Fields after the command's closing parenthesis: utime and
		// stime are the 12th and 13th (fields 14 and 15 of stat(5)).
		rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
		f := strings.Fields(rest)
		if len(f) < 13 {
			return 0, fmt.Errorf("read nats-server cpu time: short /proc stat %q", rest)
		}
		for _, v := range f[11:13] {
			ticks, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read nats-server cpu time: %w", err)
			}
			total += time.Duration(ticks) * time.Second / clockTicks
		}
	}
	return total, nil
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on Linux.
const clockTicks = 100

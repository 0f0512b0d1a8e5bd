// Command benchdatapath measures the node agent's datapath as a whole
// system, for BENCHMARKS.md: connection setup latency (connect, request,
// first response byte) direct, through chio-agent with sync receipts, with
// async receipts, and through HAProxy in mode tcp; bulk throughput direct,
// through chio-agent and through HAProxy; and the connect hook's cost per
// call from the kernel's BPF run statistics.
//
// Every figure is compared with the direct baseline of the same run. The
// client is one code path (this program re-executed as "client") in every
// mode; modes are interleaved round by round so that noise from the rest
// of the machine falls on all of them alike. All traffic stays on
// 127.0.0.1. scripts/bench builds the binaries and runs it; see
// docs/benchmarks.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// benchHost is the name the client sends (HTTP Host): the policy allows it,
// and the agent's static hosts map it to 127.0.0.1 for the anti-spoofing
// check, so no DNS is involved.
const benchHost = "upstream.bench.test"

type options struct {
	agentBin   string
	compare    string
	haproxy    string
	work       string
	conns      int
	rounds     int
	warmup     int
	bulkBytes  int64
	bulkRuns   int
	timeout    time.Duration
	runTimeout time.Duration
	profile    string
	think      time.Duration
}

type driver struct {
	opts       options
	self       string
	policyFile string
	kernelYAML string
	keyFile    string
	work       string
	measuring  bool // past the unmeasured check pass
	profiled   int  // agent runs profiled so far (-profile)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "client" {
		os.Exit(clientMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "relay" {
		os.Exit(relayMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "upstream" {
		os.Exit(upstreamMain())
	}
	var o options
	flag.StringVar(&o.agentBin, "agent", "", "chio-agent binary (required)")
	flag.StringVar(&o.compare, "compare", "", "a second chio-agent binary (another commit) measured with async receipts in the same rounds, as one more mode")
	flag.StringVar(&o.haproxy, "haproxy", "haproxy", "HAProxy binary")
	flag.StringVar(&o.work, "work", "", "work directory on the disk to measure (receipt logs, configs); default a new temporary one")
	flag.IntVar(&o.conns, "conns", 4000, "measured connections per mode for setup latency")
	flag.IntVar(&o.rounds, "rounds", 10, "interleaved rounds the connections are split into")
	flag.IntVar(&o.warmup, "warmup", 20, "unmeasured connections at the start of each client process")
	flag.Int64Var(&o.bulkBytes, "bulk-bytes", 1<<30, "bytes per bulk transfer")
	flag.IntVar(&o.bulkRuns, "bulk-runs", 5, "bulk transfers per mode (interleaved)")
	flag.DurationVar(&o.timeout, "timeout", 20*time.Minute, "bound on the whole run")
	flag.DurationVar(&o.runTimeout, "run-timeout", 5*time.Minute, "bound on one client process")
	flag.DurationVar(&o.think, "think", 0, "CPU time each client spends between its connect and its request, as a TLS client making its ClientHello does (0: none, the request follows the connect at once)")
	flag.StringVar(&o.profile, "profile", "", "write a CPU profile and an execution trace of every measured agent run into this directory (perturbs the figures: for finding where time goes, not for BENCHMARKS.md)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchdatapath:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, out io.Writer) error {
	if o.agentBin == "" {
		return errors.New("-agent is required (scripts/bench builds it)")
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: chio-agent exec attaches eBPF programs to cgroups")
	}
	if o.conns < o.rounds || o.rounds < 1 {
		return fmt.Errorf("-conns (%d) must be at least -rounds (%d), and -rounds at least 1", o.conns, o.rounds)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	d := &driver{opts: o, self: self, work: o.work}
	if d.work == "" {
		d.work, err = os.MkdirTemp("", "chio-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d.work)
	}
	if err := d.writeConfig(ctx); err != nil {
		return err
	}
	up, err := startUpstream()
	if err != nil {
		return err
	}
	defer up.close()
	hp, err := startHAProxy(ctx, o.haproxy, d.work, up.addr)
	if err != nil {
		return err
	}
	defer hp.stop()
	gr, err := startGoRelay(ctx, self, d.work, up.addr)
	if err != nil {
		return err
	}
	defer gr.stop()

	// The kernel counts run time and runs of every BPF program only while
	// statistics are enabled. BPF_ENABLE_STATS is the fd-scoped form of the
	// kernel.bpf_stats_enabled sysctl: the kernel turns it off again when
	// the fd closes, even if this process is killed, so nothing is left to
	// restore.
	statsFD, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("enable BPF statistics: %w", err)
	}
	defer statsFD.Close()

	direct := mode{name: "direct", via: up.addr.String()}
	modes := []mode{
		direct,
		{name: "chio-agent, async receipts", receipts: "async", via: up.addr.String()},
		{name: "chio-agent, sync receipts", receipts: "sync", via: up.addr.String()},
		{name: "HAProxy 2.6, mode tcp", via: hp.addr.String(), pid: hp.cmd.Process.Pid},
		{name: "Go relay (floor: read, dial, splice)", via: gr.addr.String(), pid: gr.cmd.Process.Pid},
	}
	if o.compare != "" {
		modes = append(modes, mode{name: "compared chio-agent, async receipts", receipts: "async", via: up.addr.String(), bin: o.compare, log: "compare"})
	}

	load0 := loadavg()
	began := time.Now()
	fmt.Fprintf(out, "chio-agent datapath benchmark, %s\nload average at start: %s\n", began.Format(time.RFC3339), load0)
	fmt.Fprintf(out, "upstream http://%s (net/http), haproxy %s, go relay %s, work dir %s\n", up.addr, hp.addr, gr.addr, d.work)

	// One short pass first: every mode must answer 200 before anything is
	// timed, and the first run pays one-off costs (page cache, receipt log
	// creation) that the measured runs then do not.
	for _, m := range modes {
		if _, err := d.runOnce(ctx, m, []string{"-kind", "setup", "-n", "5", "-warmup", "5"}); err != nil {
			return fmt.Errorf("check %s: %w", m.name, err)
		}
	}

	d.measuring = true
	lats := map[string][]time.Duration{}
	cpus := map[string][]cpuRound{}
	roundP50 := map[string][]time.Duration{} // each round's p50, in round order
	progs := map[string]progStats{}
	per := o.conns / o.rounds
	for r := 0; r < o.rounds; r++ {
		for i := range modes {
			// Rotate the order each round, so no mode always follows another.
			m := modes[(i+r)%len(modes)]
			res, err := d.runOnce(ctx, m, []string{"-kind", "setup", "-n", fmt.Sprint(per), "-warmup", fmt.Sprint(o.warmup)})
			if err != nil {
				return err
			}
			lats[m.name] = append(lats[m.name], res.lats...)
			if len(res.lats) > 0 {
				v := slices.Clone(res.lats)
				slices.Sort(v)
				roundP50[m.name] = append(roundP50[m.name], quantile(v, 0.5))
			}
			if res.conns > 0 {
				cpus[m.name] = append(cpus[m.name], cpuRound{res.cpu, res.conns})
			}
			for name, st := range res.progs {
				progs[name] = progs[name].add(st)
			}
		}
		fmt.Fprintf(os.Stderr, "setup round %d/%d done\n", r+1, o.rounds)
	}

	bulkModes := []mode{direct, modes[1], modes[3], modes[4]}
	bulks := map[string][]float64{}
	for r := 0; r < o.bulkRuns; r++ {
		for i := range bulkModes {
			m := bulkModes[(i+r)%len(bulkModes)]
			res, err := d.runOnce(ctx, m, []string{"-kind", "bulk", "-n", "1", "-bytes", fmt.Sprint(o.bulkBytes)})
			if err != nil {
				return err
			}
			for _, b := range res.bulks {
				bulks[m.name] = append(bulks[m.name], float64(b.bytes)/b.d.Seconds())
			}
		}
		fmt.Fprintf(os.Stderr, "bulk round %d/%d done\n", r+1, o.bulkRuns)
	}

	rep := report{
		modes: modes, bulkModes: bulkModes, lats: lats, cpus: cpus, roundP50: roundP50, bulks: bulks, progs: progs,
		conns: o.conns, rounds: o.rounds, warmup: o.warmup, bulkBytes: o.bulkBytes, bulkRuns: o.bulkRuns,
		load0: load0, load1: loadavg(), elapsed: time.Since(began),
	}
	rep.print(out)
	logs := []string{"async", "sync"}
	if o.compare != "" {
		logs = append(logs, "compare")
	}
	for _, m := range logs {
		fmt.Fprintf(out, "receipt log (%s): %s\n", m, d.verifyLog(ctx, m))
	}
	return nil
}

// writeConfig writes the policy, kernel.yaml and a signing key for the
// agent runs.
func (d *driver) writeConfig(ctx context.Context) error {
	d.policyFile = filepath.Join(d.work, "policy.yaml")
	d.kernelYAML = filepath.Join(d.work, "kernel.yaml")
	d.keyFile = filepath.Join(d.work, "bench.key")
	policy := `hushspec: "1.0.0"
name: datapath-bench
rules:
  egress:
    allow: ["` + benchHost + `"]
    default: block
`
	kernel := `version: 1
agent:
  hosts:
    ` + benchHost + `: ["127.0.0.1"]
`
	if err := os.WriteFile(d.policyFile, []byte(policy), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(d.kernelYAML, []byte(kernel), 0o644); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, d.opts.agentBin, "keygen", "--out", d.keyFile)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("chio-agent keygen: %w: %s", err, b)
	}
	return nil
}

// verifyLog checks the receipt log a mode wrote: every connection decided
// must have left a verifiable receipt, or the agent measured something other
// than its real path.
func (d *driver) verifyLog(ctx context.Context, m string) string {
	cmd := exec.CommandContext(ctx, d.opts.agentBin, "receipts", "verify", "--receipts", filepath.Join(d.work, "receipts-"+m+".db"))
	b, err := cmd.CombinedOutput()
	s := strings.Join(strings.Fields(string(b)), " ")
	if err != nil {
		return "VERIFY FAILED: " + err.Error() + ": " + s
	}
	return s
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

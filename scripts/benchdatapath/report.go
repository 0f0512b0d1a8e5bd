package main

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"
)

// Targets of issue 5 item 8, and of issue 11 item 9, which replaces the
// absolute one for async receipts with ratios to the Go relay floor of the
// same run: what the agent adds over direct, over what the floor adds.
const (
	targetAsyncP50OverFloor = 1.3 // added p50 setup, async receipts, over the floor's added p50
	targetAsyncP99OverFloor = 2.0 // the same at p99
	targetSyncAdded         = 1500 * time.Microsecond
	targetThroughput        = 0.90 // of direct
	targetHookNs            = 500.0
)

// cpuRound is a proxy's CPU time over one round's measured connections.
type cpuRound struct {
	cpu   time.Duration
	conns int
}

type report struct {
	modes, bulkModes      []mode
	lats                  map[string][]time.Duration
	cpus                  map[string][]cpuRound
	roundP50              map[string][]time.Duration
	bulks                 map[string][]float64 // bytes/s per transfer
	progs                 map[string]progStats
	conns, rounds, warmup int
	bulkBytes             int64
	bulkRuns              int
	load0, load1          string
	elapsed               time.Duration
}

// quantile is the nearest-rank quantile of sorted values.
func quantile[T any](sorted []T, q float64) T {
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func us(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d)/1e3) }

func signedUS(d time.Duration) string { return fmt.Sprintf("%+.1f µs", float64(d)/1e3) }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func (r report) print(out io.Writer) {
	fmt.Fprintf(out, "\nload average at end: %s; elapsed %s\n", r.load1, r.elapsed.Round(time.Second))
	fmt.Fprintf(out, "\nConnection setup: connect → request → first response byte, a new connection each, one at a time\n")
	fmt.Fprintf(out, "(%d connections per mode in %d interleaved rounds, %d unmeasured warm-up connections per client process)\n\n",
		r.conns, r.rounds, r.warmup)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tn\tp50\tp99\tp50 added\tp50 ratio\tp99 added\tp99 ratio\t")
	type q struct{ p50, p99 time.Duration }
	qs := map[string]q{}
	for _, m := range r.modes {
		v := slices.Clone(r.lats[m.name])
		slices.Sort(v)
		if len(v) == 0 {
			continue
		}
		qs[m.name] = q{quantile(v, 0.50), quantile(v, 0.99)}
	}
	base := qs[r.modes[0].name]
	for _, m := range r.modes {
		x := qs[m.name]
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%.2f×\t%s\t%.2f×\t\n", m.name, len(r.lats[m.name]),
			us(x.p50), us(x.p99), signedUS(x.p50-base.p50), float64(x.p50)/float64(base.p50),
			signedUS(x.p99-base.p99), float64(x.p99)/float64(base.p99))
	}
	tw.Flush()

	fmt.Fprintf(out, "\nThe proxy's CPU time per connection (user + system, all its threads, from /proc/PID/stat in\n10 ms ticks) over the measured connections: all rounds together, and the lowest and highest round\n\n")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tCPU per connection\tlowest round\thighest round\t")
	for _, m := range r.modes {
		rs := r.cpus[m.name]
		if len(rs) == 0 {
			continue
		}
		var cpu time.Duration
		var n int
		var per []time.Duration
		for _, x := range rs {
			cpu, n = cpu+x.cpu, n+x.conns
			per = append(per, x.cpu/time.Duration(x.conns))
		}
		slices.Sort(per)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", m.name, us(cpu/time.Duration(n)), us(per[0]), us(per[len(per)-1]))
	}
	tw.Flush()

	fmt.Fprintf(out, "\nBulk throughput: %d MiB streamed per transfer, %d transfers per mode, interleaved (median; min–max)\n\n", r.bulkBytes>>20, r.bulkRuns)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tmedian\tmin\tmax\tvs direct\t")
	med := map[string]float64{}
	for _, m := range r.bulkModes {
		v := slices.Clone(r.bulks[m.name])
		slices.Sort(v)
		if len(v) == 0 {
			continue
		}
		med[m.name] = quantile(v, 0.5)
	}
	gbs := func(x float64) string { return fmt.Sprintf("%.2f GB/s", x/1e9) }
	for _, m := range r.bulkModes {
		v := slices.Clone(r.bulks[m.name])
		slices.Sort(v)
		if len(v) == 0 {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0f%%\t\n", m.name, gbs(med[m.name]), gbs(v[0]), gbs(v[len(v)-1]),
			100*med[m.name]/med[r.bulkModes[0].name])
	}
	tw.Flush()

	fmt.Fprintf(out, "\nBPF programs of the agent runs (kernel run statistics, BPF_ENABLE_STATS):\n\n")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "program\truns\ttotal\tper run\t")
	names := make([]string, 0, len(r.progs))
	for n := range r.progs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p := r.progs[n]
		if p.count == 0 {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f ns\t\n", n, p.count, p.runtime, float64(p.runtime.Nanoseconds())/float64(p.count))
	}
	tw.Flush()

	async, sync := qs[r.modes[1].name], qs[r.modes[2].name]
	hook := r.progs["chio_connect4"]
	hookNs := float64(hook.runtime.Nanoseconds()) / float64(max(hook.count, 1))
	thr := med[r.bulkModes[1].name] / med[r.bulkModes[0].name]
	fmt.Fprintf(out, "\nTargets:\n")
	if len(r.modes) > 4 {
		floor := qs[r.modes[4].name]
		for _, m := range r.modes {
			if m.receipts != "async" {
				continue
			}
			a := qs[m.name]
			p50 := float64(a.p50-base.p50) / float64(floor.p50-base.p50)
			p99 := float64(a.p99-base.p99) / float64(floor.p99-base.p99)
			fmt.Fprintf(out, "  %s: added p50 ≤ %.1f× the Go relay floor's: %.2f× (%s over %s; %s)\n", m.name,
				targetAsyncP50OverFloor, p50, signedUS(a.p50-base.p50), signedUS(floor.p50-base.p50), verdict(floor.p50 > base.p50 && p50 <= targetAsyncP50OverFloor))
			fmt.Fprintf(out, "  %s: added p99 ≤ %.1f× the Go relay floor's: %.2f× (%s over %s; %s)\n", m.name,
				targetAsyncP99OverFloor, p99, signedUS(a.p99-base.p99), signedUS(floor.p99-base.p99), verdict(floor.p99 > base.p99 && p99 <= targetAsyncP99OverFloor))
		}
	}
	fmt.Fprintf(out, "  added p50 setup, sync receipts ≤ %s: %s (%s)\n", us(targetSyncAdded), signedUS(sync.p50-base.p50), verdict(sync.p50-base.p50 <= targetSyncAdded))
	fmt.Fprintf(out, "  bulk throughput ≥ %.0f%% of direct: %.0f%% (%s)\n", 100*targetThroughput, 100*thr, verdict(thr >= targetThroughput))
	fmt.Fprintf(out, "  connect hook ≤ %.0f ns per call: %.0f ns (%s)\n", targetHookNs, hookNs, verdict(hook.count > 0 && hookNs <= targetHookNs))
	if len(r.modes) > 4 {
		floor := qs[r.modes[4].name]
		fmt.Fprintf(out, "Against the Go relay floor (same run): it adds %s p50 over direct; chio-agent with async receipts adds %s p50 over it\n",
			signedUS(floor.p50-base.p50), signedUS(async.p50-floor.p50))
	}
	if cmpm := r.modes[len(r.modes)-1]; cmpm.bin != "" {
		// The two agents of one round ran minutes apart at most: the
		// difference of their p50s, round by round, is steadier than that
		// of the pooled p50s when the machine's load drifts.
		a, c := r.roundP50[r.modes[1].name], r.roundP50[cmpm.name]
		var d []time.Duration
		higher := 0
		for i := range min(len(a), len(c)) {
			d = append(d, a[i]-c[i])
			if a[i] > c[i] {
				higher++
			}
		}
		if len(d) > 0 {
			slices.Sort(d)
			fmt.Fprintf(out, "Round by round, chio-agent's p50 minus the compared agent's: median %s, higher in %d of %d rounds\n",
				signedUS(quantile(d, 0.5)), higher, len(d))
		}
	}
}

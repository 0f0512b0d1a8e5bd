// Package tuning sets the Go runtime up the way the chio-agent binary runs,
// so that benchmarks measure what operators get.
package tuning

import (
	"runtime"
	"runtime/debug"
)

// GCPercent is the collector's target unless the operator sets GOGC. The
// receipt log's committer makes garbage at a steady rate (bbolt copies every
// page a commit touches); with Go's default of 100 the collector runs every
// few milliseconds under load and stretches Append's p99 past 5 ms at
// 10,000 receipts/s (docs/receipt-log.md). The heap stays a few MB, so some
// memory buys a quieter tail.
const GCPercent = 400

// Apply sets the collector's target (GCPercent) unless getenv("GOGC") is
// set, and adds one P beyond the default unless getenv("GOMAXPROCS") is set.
//
// The extra P is for the receipt log's committer (the node agent gives it
// back, see Datapath): it runs on its own
// lower-priority OS thread (receipts/nice_linux.go), but while it commits
// it holds a P like any goroutine, and with one P per core a commit left
// the requests and connections of a 2-core node one P to share. With one
// more P the kernel's scheduler, which knows the committer's priority, is
// the one that arbitrates. (Sidecar p99 added at async receipts on 2 cores:
// +180 to +300 µs with 2 Ps, +130 to +160 µs with 3; BENCHMARKS.md.)
//
// Setting GOMAXPROCS stops the runtime from following later changes of
// the container's CPU limit (Go 1.25+ does by default); the value set is
// the default at start, which already honours the limit, plus one.
//
// It returns a function that restores the previous settings.
func Apply(getenv func(string) string) (restore func()) {
	oldGC, oldProcs := -2, 0
	if getenv("GOGC") == "" {
		oldGC = debug.SetGCPercent(GCPercent)
	}
	if getenv("GOMAXPROCS") == "" {
		oldProcs = runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
	}
	return func() {
		if oldGC != -2 {
			debug.SetGCPercent(oldGC)
		}
		if oldProcs != 0 {
			runtime.GOMAXPROCS(oldProcs)
		}
	}
}

// Datapath gives back, for the node agent, the P that Apply added, unless
// getenv("GOMAXPROCS") is set: GOMAXPROCS returns to the runtime's default
// (one P per CPU the process may use), which also lets it follow later
// changes of the container's CPU limit again.
//
// The node agent relays connections rather than answering requests: each
// one hands over between several goroutines (accept, decide and dial, the
// relay's two directions, the receipt, the committer), and every hand-over
// to a goroutine while a P is idle wakes an OS thread to run it. With more
// Ps than cores those threads spin and sleep against the client and the
// upstream for the same two cores (a profile of the agent under
// scripts/bench spends a quarter of its samples switching threads). With
// one P per core the p50 that chio-agent adds per connection fell by 21 to
// 83 µs in 8 of 10 runs of both settings in the same rounds (it rose by 2
// and 13 µs in the other two), and its added p99 fell in 7 of 10
// (BENCHMARKS.md, Datapath). The sidecar keeps the extra P.
func Datapath(getenv func(string) string) {
	if getenv("GOMAXPROCS") == "" {
		runtime.SetDefaultGOMAXPROCS()
	}
}

// LimitMemory sets the runtime's soft memory limit to bytes unless
// getenv("GOMEMLIMIT") is set, and returns the previous limit. The node
// agent passes the ceiling its connection limits imply (agent.Limits): its
// live memory cannot pass that ceiling, so the limit only tells the
// collector to run before garbage (GCPercent lets it reach several times
// the live heap) takes the process past it.
func LimitMemory(getenv func(string) string, bytes int64) int64 {
	if getenv("GOMEMLIMIT") != "" || bytes <= 0 {
		return debug.SetMemoryLimit(-1)
	}
	return debug.SetMemoryLimit(bytes)
}

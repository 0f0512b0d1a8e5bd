package tuning

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestApply(t *testing.T) {
	procs, gc := runtime.GOMAXPROCS(0), debug.SetGCPercent(100)
	debug.SetGCPercent(gc)

	restore := Apply(func(string) string { return "" })
	if got := runtime.GOMAXPROCS(0); got != procs+1 {
		t.Errorf("GOMAXPROCS after Apply = %d, want %d", got, procs+1)
	}
	if got := debug.SetGCPercent(GCPercent); got != GCPercent {
		t.Errorf("GC percent after Apply = %d, want %d", got, GCPercent)
	}
	restore()
	if got := runtime.GOMAXPROCS(0); got != procs {
		t.Errorf("GOMAXPROCS after restore = %d, want %d", got, procs)
	}
	if got := debug.SetGCPercent(gc); got != gc {
		t.Errorf("GC percent after restore = %d, want %d", got, gc)
	}
}

// An operator's GOGC and GOMAXPROCS win: Apply changes neither.
func TestApplyKeepsOperatorChoice(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	gc := debug.SetGCPercent(123)
	defer debug.SetGCPercent(gc)
	restore := Apply(func(k string) string { return map[string]string{"GOGC": "123", "GOMAXPROCS": "1"}[k] })
	defer restore()
	if got := runtime.GOMAXPROCS(0); got != procs {
		t.Errorf("GOMAXPROCS = %d, want the unchanged %d", got, procs)
	}
	if got := debug.SetGCPercent(123); got != 123 {
		t.Errorf("GC percent = %d, want the unchanged 123", got)
	}
}

// LimitMemory sets the soft limit, unless the operator set GOMEMLIMIT.
func TestLimitMemory(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(old)
	LimitMemory(func(string) string { return "" }, 1<<30)
	if got := debug.SetMemoryLimit(-1); got != 1<<30 {
		t.Errorf("memory limit = %d, want 1 GiB", got)
	}
	debug.SetMemoryLimit(old)
	LimitMemory(func(k string) string { return map[string]string{"GOMEMLIMIT": "2GiB"}[k] }, 1<<30)
	if got := debug.SetMemoryLimit(-1); got != old {
		t.Errorf("memory limit = %d with GOMEMLIMIT set, want it unchanged (%d)", got, old)
	}
}

func TestDatapath(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(procs) })

	restore := Apply(func(string) string { return "" })
	defer restore()
	runtime.SetDefaultGOMAXPROCS()
	def := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(def + 1)
	Datapath(func(string) string { return "" })
	if got := runtime.GOMAXPROCS(0); got != def {
		t.Errorf("GOMAXPROCS after Datapath = %d, want the default %d", got, def)
	}

	runtime.GOMAXPROCS(def + 1)
	Datapath(func(k string) string {
		if k == "GOMAXPROCS" {
			return "3"
		}
		return ""
	})
	if got := runtime.GOMAXPROCS(0); got != def+1 {
		t.Errorf("GOMAXPROCS after Datapath with GOMAXPROCS set = %d, want %d (left alone)", got, def+1)
	}
}

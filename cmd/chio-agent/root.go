package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"runtime/trace"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a specific process exit status out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// exitCode maps an error returned by a command to the process exit status.
func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "chio-agent",
		Short: "Chio for Go: policy-mediated, receipted egress for AI agents",
		Long: `chio-agent mediates what AI agents do. A kernel evaluates each action against a
HushSpec policy, decides, and signs a Chio receipt for every decision into a log
sealed by Merkle checkpoints.

It runs as a node agent (eBPF cgroup hooks redirect the outbound connections of
unmodified processes through a local evaluator), as an HTTP sidecar in front of
an API, or as a Go library linked into a trusted agent.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.SetVersionTemplate("chio-agent {{.Version}}\n")
	// A flag that does not parse is a usage error, as a bad flag value is.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: &usageError{err}}
	})
	// A CPU profile of any command, for finding where a connection's time
	// goes (go tool pprof FILE). Hidden: a tool for developers.
	// An execution trace shows the rest: goroutines blocked, scheduling
	// latency, GC (go tool trace FILE).
	var cpuProfile, traceFile string
	var stops []func()
	root.PersistentFlags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile to this file")
	root.PersistentFlags().MarkHidden("cpuprofile")
	root.PersistentFlags().StringVar(&traceFile, "trace", "", "write an execution trace to this file")
	root.PersistentFlags().MarkHidden("trace")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		for _, p := range []struct {
			path, what string
			start      func(io.Writer) error
			stop       func()
		}{
			{cpuProfile, "cpu profile", pprof.StartCPUProfile, pprof.StopCPUProfile},
			{traceFile, "trace", trace.Start, trace.Stop},
		} {
			if p.path == "" {
				continue
			}
			f, err := os.Create(p.path)
			if err != nil {
				return fmt.Errorf("%s: %w", p.what, err)
			}
			if err := p.start(f); err != nil {
				f.Close()
				return fmt.Errorf("%s: %w", p.what, err)
			}
			stops = append(stops, func() { p.stop(); f.Close() })
		}
		return nil
	}
	root.PersistentPostRun = func(*cobra.Command, []string) {
		for _, stop := range stops {
			stop()
		}
	}
	root.AddCommand(
		newVersionCommand(),
		newDemoCommand(),
		newExecCommand(),
		newRunCommand(),
		newStatusCommand(),
		newReloadCommand(),
		newUninstallCommand(),
		newPolicyCommand(),
		newReceiptsCommand(),
		newSessionsCommand(),
		newKeygenCommand(),
		newKeysCommand(),
		newAPICommand(),
	)
	registerCompletions(root)
	return root
}

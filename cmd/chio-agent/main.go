// Command chio-agent is the Chio node agent, sidecar and policy tool.
//
// main stays thin: it builds the cobra command tree and runs it. Each command
// lives in its own file with its own options struct.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/backbay-labs/chio-agent/internal/tuning"
)

func main() {
	// GOGC=400 and one P for the receipt committer, unless the operator
	// chose otherwise (see internal/tuning); the node agent gives the P
	// back once it knows it is one (tuning.Datapath).
	tuning.Apply(os.Getenv)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "chio-agent:", err)
		os.Exit(exitCode(err))
	}
}

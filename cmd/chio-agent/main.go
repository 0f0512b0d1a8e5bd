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
	"runtime/debug"
	"syscall"
)

func main() {
	// The receipt log's committer makes garbage at a steady rate (bbolt
	// pages); with Go's default GOGC=100 the collector runs every few
	// milliseconds under load and stretches Append's p99 past 5 ms at
	// 10,000 receipts/s (docs/receipt-log.md). The heap stays small, so trade
	// some memory for a quieter tail, unless the operator chose a GOGC.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "chio-agent:", err)
		os.Exit(exitCode(err))
	}
}

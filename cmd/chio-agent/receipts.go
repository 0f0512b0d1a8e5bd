package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
)

// exitVerifyFailed is the exit status of a log that fails verification, so
// scripts can tell "tampered" from "could not run".
const exitVerifyFailed = 2

func newReceiptsCommand() *cobra.Command {
	r := &cobra.Command{
		Use:   "receipts",
		Short: "Verify, list, export, import and prove receipts in a receipt log or a central store",
	}
	r.AddCommand(
		newReceiptsVerifyCommand(),
		newReceiptsListCommand(),
		newReceiptsShowCommand(),
		newReceiptsTailCommand(),
		newReceiptsExportCommand(),
		newReceiptsProveCommand(),
		newReceiptsImportCommand(),
		newReceiptsCollectCommand(),
		newReceiptsBenchCommand(),
	)
	return r
}

// dbOptions are the flags every reading command shares. The log and the
// agent's socket are found as the agent finds them: the flag, else
// $CHIO_RECEIPT_SINK (the log), else kernel.yaml (--config, else
// $CHIO_KERNEL_CONFIG_PATH), else the defaults.
type dbOptions struct {
	agentConfig
	// receipts is --receipts; "" means not given.
	receipts string
	// lockTimeout bounds the wait for a process holding the file (the
	// agent); after it the command fails instead of hanging. Default 2s.
	lockTimeout time.Duration
	// lookup reads the environment (os.LookupEnv; tests replace it).
	lookup func(string) (string, bool)

	// path is the receipt log file and socket the running agent's status
	// socket (when the agent holds the file, reads go to a consistent
	// snapshot it serves there), both set by resolve.
	path, socket string
}

func (o *dbOptions) AddFlags(fs *pflag.FlagSet) {
	addReceiptsFlag(fs, &o.receipts, "", "receipt log: a bbolt path or file:// URL (default $"+config.EnvReceiptSink+", else the config's receipts.sink, else "+defaultReceiptDB+"; a nats:// or store sink reads its local log, receipts.path)")
	fs.DurationVar(&o.lockTimeout, "lock-timeout", 2*time.Second, "how long to wait for a process holding the log before giving up")
	o.agentConfig.AddFlags(fs)
}

// resolve finds the log and the agent's socket.
func (o *dbOptions) resolve() error {
	if o.path != "" {
		return nil
	}
	lookup := o.lookup
	if lookup == nil {
		lookup = os.LookupEnv
	}
	c, err := o.load(lookup)
	if err != nil {
		return err
	}
	// A NATS sink ships from a local log: the readers read that log.
	o.path, _, err = config.ResolveSink(config.Pick(lookup, o.receipts, config.EnvReceiptSink, c.Receipts.Sink, ""), &c.Receipts, defaultReceiptDB)
	if err != nil {
		return err
	}
	o.socket = o.agentConfig.socket(c)
	return nil
}

// open opens the log read-only: readers never write, so they never change
// evidence, and they share the file with other readers. When the running
// agent holds the file (bbolt lets no reader in meanwhile), it reads a
// consistent snapshot the agent serves on its status socket instead.
func (o *dbOptions) open() (*receipts.Log, error) {
	if err := o.resolve(); err != nil {
		return nil, err
	}
	l, err := receipts.Open(o.path, receipts.Options{ReadOnly: true, LockTimeout: o.lockTimeout})
	if errors.Is(err, receipts.ErrFormat) && central.IsCentral(o.path) {
		return nil, usageErrorf("%s is a central store, not one node's receipt log: list, verify, prove and export --package read it", o.path)
	}
	if err == nil || !errors.Is(err, receipts.ErrLocked) || o.socket == "" {
		return l, err
	}
	if _, serr := os.Stat(o.socket); serr != nil {
		return nil, err
	}
	snap, ferr := o.snapshot()
	if ferr != nil {
		return nil, fmt.Errorf("%w; reading through the agent failed too: %v", err, ferr)
	}
	return snap, nil
}

// snapshot fetches the agent's snapshot into an unlinked temporary file and
// opens it read-only (the open file outlives its name).
func (o *dbOptions) snapshot() (*receipts.Log, error) {
	f, err := os.CreateTemp("", "chio-receipts-snapshot-*.db")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	if err := agent.FetchSnapshot(context.Background(), o.socket, f); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return receipts.Open(f.Name(), receipts.Options{ReadOnly: true, LockTimeout: o.lockTimeout})
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

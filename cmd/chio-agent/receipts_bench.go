package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/receipts"
)

type benchOptions struct {
	// path is the log to append to; created when missing.
	path string
	// count is the number of receipts to append. Default 10000.
	count int
	// writers is the number of concurrent appenders. Default 16.
	writers int
	// mode is sync (durable before Append returns) or async.
	mode string
	// rate paces the writers to this many receipts/s; 0: as fast as possible.
	rate float64
	// keyFile holds the signing key; it beats CHIO_SIGNING_KEY. With
	// neither, bench signs with a throwaway key and says so.
	keyFile string
	// checkpointEvery is the checkpoint batch size. Default 100.
	checkpointEvery int
	// lookupEnv reads the environment (os.LookupEnv; tests replace it).
	lookupEnv kernel.LookupEnv
}

func (o *benchOptions) AddFlags(fs *pflag.FlagSet) {
	addReceiptsFlag(fs, &o.path, "", "receipt log to append to (created when missing; required)")
	fs.IntVar(&o.count, "count", 10000, "receipts to append")
	fs.IntVar(&o.writers, "writers", 16, "concurrent writers")
	fs.StringVar(&o.mode, "receipt-mode", "sync", "durability mode: sync or async")
	alias(fs, "mode", "receipt-mode")
	fs.Float64Var(&o.rate, "rate", 0, "pace all writers to this many receipts/s (0: as fast as possible)")
	fs.StringVar(&o.keyFile, "key", "", "signing key `file` (default: $"+kernel.EnvSigningKey+", else a throwaway key)")
	alias(fs, "key-file", "key")
	fs.IntVar(&o.checkpointEvery, "checkpoint-every", 100, "receipts per checkpoint")
}

func newReceiptsBenchCommand() *cobra.Command {
	o := &benchOptions{lookupEnv: os.LookupEnv}
	cmd := &cobra.Command{
		Use:   "bench --receipts PATH [flags]",
		Short: "Append synthetic signed receipts and report receipts/s and Append latency",
		Long: `bench appends --count synthetic, validly signed egress receipts from --writers
concurrent goroutines, each signing its own receipts, and prints the rate of
durable receipts and the p50/p99 Append latency. The log it writes is an
ordinary log: receipts verify accepts it. Use it on the disk the agent will use
to size a node (docs/receipt-log.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.path == "" {
				return usageErrorf("bench receipts: --receipts is required")
			}
			if o.count <= 0 || o.writers <= 0 || o.rate < 0 {
				return fmt.Errorf("bench receipts: --count and --writers must be > 0, --rate >= 0")
			}
			mode, err := receipts.ParseMode(o.mode)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			// --key, else CHIO_SIGNING_KEY: flags win, as everywhere.
			var key ed25519.PrivateKey
			if o.keyFile != "" {
				key, err = kernel.LoadKeyFile(o.keyFile)
			} else {
				key, err = kernel.LoadSigningKey(o.lookupEnv, "")
			}
			if errors.Is(err, kernel.ErrNoSigningKey) {
				_, key, err = ed25519.GenerateKey(nil)
				fmt.Fprintf(w, "no signing key given: signing with a throwaway key\n")
			}
			if err != nil {
				return err
			}
			l, err := receipts.Open(o.path, receipts.Options{Key: key, Mode: mode, CheckpointEvery: o.checkpointEvery})
			if err != nil {
				return err
			}
			res, err := receipts.Bench(cmd.Context(), l, receipts.BenchOptions{Count: o.count, Writers: o.writers, Rate: o.rate})
			if cerr := l.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "%d receipts, %d writers, %s mode: %.0f receipts/s; Append latency p50 %s p99 %s max %s\n",
				res.Count, res.Writers, res.Mode, res.PerSecond, res.P50.Round(time.Microsecond),
				res.P99.Round(time.Microsecond), res.Max.Round(time.Microsecond))
			return nil
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

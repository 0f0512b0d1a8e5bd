package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/receipts"
)

type tailOptions struct {
	db dbOptions
	// lines is how many of the last receipts to print first. Default 10.
	lines int
	// follow keeps printing new receipts until interrupted.
	follow bool
	// interval is how often -f looks for new receipts. Default 1s.
	interval time.Duration
	// json prints JSON lines.
	json bool
}

func (o *tailOptions) AddFlags(fs *pflag.FlagSet) {
	o.db.AddFlags(fs)
	fs.IntVarP(&o.lines, "lines", "n", 10, "print the last N receipts first")
	fs.BoolVarP(&o.follow, "follow", "f", false, "keep printing receipts as they are appended")
	fs.DurationVar(&o.interval, "interval", time.Second, "with -f, how often to look for new receipts")
	fs.BoolVar(&o.json, "json", false, "print JSON lines")
}

func newReceiptsTailCommand() *cobra.Command {
	o := &tailOptions{}
	cmd := &cobra.Command{
		Use:   "tail [flags]",
		Short: "Print the last receipts, and with -f the ones appended after",
		Long: `tail prints the last receipts. With -f it keeps printing what is appended:
while the agent runs and holds the file (bbolt lets no other reader in), it
follows the log through the agent's status socket (--status-socket); otherwise it
reopens the file read-only every --interval.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			if err := o.db.resolve(); err != nil {
				return err
			}
			if o.follow {
				// A running agent holds the file: follow it through its
				// socket, receipt by receipt, rather than by snapshots.
				probe, err := receipts.Open(o.db.path, receipts.Options{ReadOnly: true, LockTimeout: o.db.lockTimeout})
				if err == nil {
					probe.Close()
				}
				if errors.Is(err, receipts.ErrLocked) && o.db.socket != "" {
					if _, serr := os.Stat(o.db.socket); serr == nil {
						return o.followAgent(ctx, out)
					}
				}
			}
			var after uint64
			first := true
			warned := false
			for {
				l, err := o.db.open()
				switch {
				case err == nil:
					if first {
						st, serr := l.Stats()
						if serr != nil {
							l.Close()
							return serr
						}
						if st.LastSeq > uint64(o.lines) {
							after = st.LastSeq - uint64(o.lines)
						}
					}
					err = printEntries(ctx, out, l, receipts.Filter{AfterSeq: after}, o.json, first)
					if err == nil {
						if st, serr := l.Stats(); serr == nil {
							after = st.LastSeq
						}
					}
					l.Close()
					if err != nil {
						return err
					}
					first = false
				case o.follow && errors.Is(err, receipts.ErrLocked):
					if !warned {
						fmt.Fprintf(cmd.ErrOrStderr(), "tail: %v; waiting\n", err)
						warned = true
					}
				default:
					return err
				}
				if !o.follow {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(o.interval):
				}
			}
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// followAgent prints the last receipts of the running agent's log, then the
// new ones as it appends them, through its status socket.
func (o *tailOptions) followAgent(ctx context.Context, out io.Writer) error {
	st, err := agent.QueryStatus(ctx, o.db.socket)
	if err != nil {
		return err
	}
	var after uint64
	if st.Receipts.LastSeq > uint64(o.lines) {
		after = st.Receipts.LastSeq - uint64(o.lines)
	}
	header := true
	for {
		es, err := agent.FetchReceipts(ctx, o.db.socket, after, 10000)
		if err != nil {
			return err
		}
		if len(es) > 0 || header {
			perr := printScan(out, func(fn func(receipts.Entry) error) error {
				for _, e := range es {
					if err := fn(e); err != nil {
						return err
					}
				}
				return nil
			}, o.json, header)
			if perr != nil {
				return perr
			}
			header = false
		}
		if len(es) > 0 {
			after = es[len(es)-1].Seq
			if len(es) == 10000 {
				continue // more waiting
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.interval):
		}
	}
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
)

type listOptions struct {
	db dbOptions
	// since keeps receipts at or after this time: a duration back from now
	// ("1h"), RFC 3339, or unix seconds. Default: no bound.
	since string
	// decision, workload and host filter on the indexed fields.
	decision string
	workload string
	host     string
	// limit caps the receipts printed; 0 means all. Default 100.
	limit int
	// json prints one JSON object per receipt per line.
	json bool
	// log picks one log of a central store; all (the default there) every
	// log.
	log string
	all bool
	// rejected lists a central store's refused batches instead.
	rejected bool
}

func (o *listOptions) AddFlags(fs *pflag.FlagSet) {
	o.db.AddFlags(fs)
	fs.StringVar(&o.since, "since", "", "only receipts at or after: a duration ago (1h), RFC 3339 time, or unix seconds")
	fs.StringVar(&o.decision, "decision", "", "only receipts with this decision (allow, deny, none)")
	alias(fs, "verdict", "decision")
	fs.StringVar(&o.workload, "workload", "", "only receipts from this workload")
	fs.StringVar(&o.host, "host", "", "only receipts to this destination host")
	fs.IntVar(&o.limit, "limit", 100, "print at most this many receipts (0: all)")
	fs.BoolVar(&o.json, "json", false, "print JSON lines: seq, id, timestamp, decision, workload, host and the receipt (and log_id from a central store)")
	fs.StringVar(&o.log, "log", "", "central store only: list this log `id` (default every log)")
	fs.BoolVar(&o.all, "all", false, "central store only: list every log (the default)")
	fs.BoolVar(&o.rejected, "rejected", false, "central store only: list the refused batches kept aside, with why (--json: with the batches)")
}

func parseSince(s string, now time.Time) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d).Unix(), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.Unix(), nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("parse --since %q: want a duration (1h), an RFC 3339 time or unix seconds", s)
}

func newReceiptsListCommand() *cobra.Command {
	o := &listOptions{}
	cmd := &cobra.Command{
		Use:   "list [flags]",
		Short: "List receipts in sequence order, filtered by the indexes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			since, err := parseSince(o.since, time.Now())
			if err != nil {
				return err
			}
			if o.limit < 0 {
				return fmt.Errorf("parse --limit %d: must be >= 0", o.limit)
			}
			f := receipts.Filter{Since: since, Decision: o.decision, Workload: o.workload, Host: o.host, Limit: o.limit}
			if o.log != "" && o.all {
				return usageErrorf("list receipts: --log and --all exclude each other")
			}
			if err := o.db.resolve(); err != nil {
				return err
			}
			s, err := openCentral(o.db.path, central.Options{LockTimeout: o.db.lockTimeout})
			if err != nil {
				return err
			}
			if s != nil {
				defer s.Close()
				if o.rejected {
					return printRejected(cmd.OutOrStdout(), s, o.json)
				}
				return printCentral(cmd.Context(), cmd.OutOrStdout(), s, o.log, f, o.json)
			}
			if o.log != "" || o.all || o.rejected {
				return usageErrorf("list receipts: --log, --all and --rejected need a central store; %s is a local log", o.db.path)
			}
			l, err := o.db.open()
			if err != nil {
				return err
			}
			defer l.Close()
			return printEntries(cmd.Context(), cmd.OutOrStdout(), l, f, o.json, true)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func printEntries(ctx context.Context, out io.Writer, l *receipts.Log, f receipts.Filter, asJSON, header bool) error {
	return printScan(out, func(fn func(receipts.Entry) error) error { return l.Scan(ctx, f, fn) }, asJSON, header)
}

// printScan prints the entries scan yields, as a table or JSON lines.
func printScan(out io.Writer, scan func(func(receipts.Entry) error) error, asJSON, header bool) error {
	return printRows(out, func(fn func(string, receipts.Entry) error) error {
		return scan(func(e receipts.Entry) error { return fn("", e) })
	}, asJSON, header, false)
}

// printRows prints entries as a table (with a LOG column when withLog) or
// JSON lines (with log_id when withLog).
func printRows(out io.Writer, scan func(func(string, receipts.Entry) error) error, asJSON, header, withLog bool) error {
	bw := bufio.NewWriter(out)
	var tw *tabwriter.Writer
	if !asJSON {
		tw = tabwriter.NewWriter(bw, 0, 4, 2, ' ', 0)
		if header && withLog {
			fmt.Fprint(tw, "LOG\t")
		}
		if header {
			fmt.Fprintln(tw, "SEQ\tTIME\tDECISION\tWORKLOAD\tHOST\tID")
		}
	}
	err := scan(func(logID string, e receipts.Entry) error {
		if asJSON {
			var v any = e
			if withLog {
				v = central.Entry{LogID: logID, Entry: e}
			}
			b, err := json.Marshal(v)
			if err != nil {
				return err
			}
			bw.Write(append(b, '\n'))
			return nil
		}
		if withLog {
			fmt.Fprintf(tw, "%s\t", logID)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, time.Unix(e.Timestamp, 0).UTC().Format(time.RFC3339),
			e.Decision, dash(e.Workload), dash(e.Host), e.ID)
		return nil
	})
	if tw != nil {
		tw.Flush()
	}
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return err
}

// printCentral prints the receipts of a central store's logs (logID "":
// every log) as a table with a LOG column, or JSON lines with log_id.
func printCentral(ctx context.Context, out io.Writer, s *central.Store, logID string, f receipts.Filter, asJSON bool) error {
	return printRows(out, func(fn func(string, receipts.Entry) error) error {
		return s.Scan(ctx, logID, f, func(e central.Entry) error { return fn(e.LogID, e.Entry) })
	}, asJSON, true, true)
}

// printRejected prints the batches a central store refused and kept aside.
func printRejected(out io.Writer, s *central.Store, asJSON bool) error {
	bw := bufio.NewWriter(out)
	tw := tabwriter.NewWriter(bw, 0, 4, 2, ' ', 0)
	if !asJSON {
		fmt.Fprintln(tw, "RECEIVED\tLOG\tCHECKPOINT\tDEFECT\tSHA256\tREASON")
	}
	err := s.Rejections(func(r central.Rejection) error {
		if asJSON {
			b, err := json.Marshal(r)
			if err != nil {
				return err
			}
			bw.Write(append(b, '\n'))
			return nil
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", time.Unix(r.ReceivedAt, 0).UTC().Format(time.RFC3339), dash(r.Error.LogID),
			r.Error.CheckpointSeq, r.Error.Defect, r.SHA256, r.Error.Reason)
		return nil
	})
	tw.Flush()
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

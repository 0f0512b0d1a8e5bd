package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/receipts"
)

// defaultReceiptDB is where the node agent keeps its log.
const defaultReceiptDB = "/var/lib/chio-agent/receipts.db"

// exitVerifyFailed is the exit status of a log that fails verification, so
// scripts can tell "tampered" from "could not run".
const exitVerifyFailed = 2

func newReceiptsCommand() *cobra.Command {
	r := &cobra.Command{
		Use:   "receipts",
		Short: "Verify, list, export and prove receipts in a receipt log",
	}
	r.AddCommand(
		newReceiptsVerifyCommand(),
		newReceiptsListCommand(),
		newReceiptsShowCommand(),
		newReceiptsTailCommand(),
		newReceiptsExportCommand(),
		newReceiptsProveCommand(),
		newReceiptsBenchCommand(),
	)
	return r
}

// dbOptions are the flags every reading command shares.
type dbOptions struct {
	// path is the receipt log file. Default defaultReceiptDB.
	path string
	// lockTimeout bounds the wait for a process holding the file (the
	// agent); after it the command fails instead of hanging. Default 2s.
	lockTimeout time.Duration
	// socket is the running agent's status socket: when the agent holds
	// the file, reads go to a consistent snapshot it serves there.
	socket string
}

func (o *dbOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.path, "db", defaultReceiptDB, "receipt log file")
	fs.DurationVar(&o.lockTimeout, "lock-timeout", 2*time.Second, "how long to wait for a process holding the log before giving up")
	fs.StringVar(&o.socket, "socket", agent.DefaultStatusSocket, "status socket of the running agent that holds the log, which then serves a snapshot of it")
}

// open opens the log read-only: readers never write, so they never change
// evidence, and they share the file with other readers. When the running
// agent holds the file (bbolt lets no reader in meanwhile), it reads a
// consistent snapshot the agent serves on its status socket instead.
func (o *dbOptions) open() (*receipts.Log, error) {
	l, err := receipts.Open(o.path, receipts.Options{ReadOnly: true, LockTimeout: o.lockTimeout})
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

// ---- verify

type verifyOptions struct {
	db dbOptions
	// trustedKey, when set, must be the log's first kernel key (hex);
	// without it verify proves integrity against the header's own key.
	trustedKey string
	// json prints the report as JSON.
	json bool
}

func (o *verifyOptions) AddFlags(fs *pflag.FlagSet) {
	o.db.AddFlags(fs)
	fs.StringVar(&o.trustedKey, "key", "", "trusted kernel public key (hex); default: the key the log's header names")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON")
}

func newReceiptsVerifyCommand() *cobra.Command {
	o := &verifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify --db PATH",
		Short: "Check every receipt, checkpoint, Merkle root and the checkpoint chain",
		Long: `verify checks the whole log: every receipt's canonical form, id and signature,
sequence continuity, the indexes, every checkpoint's Merkle root, signature,
previous-checkpoint hash and chain root, and the header. It exits 0 with a
summary when all hold, and 2 naming the first bad sequence number otherwise,
or the damaged page of a file too damaged to read (truncated, garbage pages).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := o.db.open()
			if errors.Is(err, receipts.ErrCorrupt) || errors.Is(err, receipts.ErrTampered) {
				// A file too damaged to open fails verification too.
				return &exitError{code: exitVerifyFailed, err: err}
			}
			if err != nil {
				return err
			}
			defer l.Close()
			rep, err := l.Verify(cmd.Context(), receipts.VerifyOptions{TrustedKey: o.trustedKey})
			if err != nil {
				var de *receipts.DefectError
				if errors.As(err, &de) {
					return &exitError{code: exitVerifyFailed, err: fmt.Errorf("verify %s: %w", o.db.path, err)}
				}
				return fmt.Errorf("verify %s: %w", o.db.path, err)
			}
			w := cmd.OutOrStdout()
			if o.json {
				return writeJSON(w, rep)
			}
			fmt.Fprintf(w, "ok: %s\n", o.db.path)
			fmt.Fprintf(w, "  receipts     %d (seq 1-%d, every signature and id checked)\n", rep.Verified, rep.LastSeq)
			fmt.Fprintf(w, "  checkpoints  %d (sealed through seq %d, %d unsealed)\n", rep.Checkpoints, rep.SealedSeq, rep.Unsealed)
			for _, k := range rep.Keys {
				fmt.Fprintf(w, "  kernel key   %s from seq %d\n", k.KernelKey, k.SinceSeq)
			}
			for _, ls := range rep.Losses {
				fmt.Fprintf(w, "  crash loss   %d accepted receipts never made durable after seq %d (found %s)\n",
					ls.Count, ls.AfterSeq, time.Unix(ls.DetectedAt, 0).UTC().Format(time.RFC3339))
			}
			return nil
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// ---- list

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
}

func (o *listOptions) AddFlags(fs *pflag.FlagSet) {
	o.db.AddFlags(fs)
	fs.StringVar(&o.since, "since", "", "only receipts at or after: a duration ago (1h), RFC 3339 time, or unix seconds")
	fs.StringVar(&o.decision, "decision", "", "only receipts with this decision (allow, deny, none)")
	fs.StringVar(&o.workload, "workload", "", "only receipts from this workload")
	fs.StringVar(&o.host, "host", "", "only receipts to this destination host")
	fs.IntVar(&o.limit, "limit", 100, "print at most this many receipts (0: all)")
	fs.BoolVar(&o.json, "json", false, "print JSON lines: seq, id, timestamp, decision, workload, host and the receipt")
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
		Use:   "list --db PATH [--since T] [--decision D] [--workload W] [--host H]",
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
			l, err := o.db.open()
			if err != nil {
				return err
			}
			defer l.Close()
			f := receipts.Filter{Since: since, Decision: o.decision, Workload: o.workload, Host: o.host, Limit: o.limit}
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
	bw := bufio.NewWriter(out)
	var tw *tabwriter.Writer
	if !asJSON {
		tw = tabwriter.NewWriter(bw, 0, 4, 2, ' ', 0)
		if header {
			fmt.Fprintln(tw, "SEQ\tTIME\tDECISION\tWORKLOAD\tHOST\tID")
		}
	}
	err := scan(func(e receipts.Entry) error {
		if asJSON {
			b, err := json.Marshal(e)
			if err != nil {
				return err
			}
			bw.Write(append(b, '\n'))
			return nil
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

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ---- show

type showOptions struct {
	db dbOptions
}

func (o *showOptions) AddFlags(fs *pflag.FlagSet) { o.db.AddFlags(fs) }

func newReceiptsShowCommand() *cobra.Command {
	o := &showOptions{}
	cmd := &cobra.Command{
		Use:   "show SEQ|ID --db PATH",
		Short: "Print one receipt by sequence number or id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := o.db.open()
			if err != nil {
				return err
			}
			defer l.Close()
			var e receipts.Entry
			if seq, perr := strconv.ParseUint(args[0], 10, 64); perr == nil && len(args[0]) < 64 {
				e, err = l.Get(seq)
			} else {
				e, err = l.Lookup(strings.ToLower(args[0]))
			}
			if err != nil {
				return err
			}
			var pretty any
			if err := json.Unmarshal(e.Receipt, &pretty); err != nil {
				return fmt.Errorf("show receipt seq %d: %w", e.Seq, err)
			}
			return writeJSON(cmd.OutOrStdout(), map[string]any{"seq": e.Seq, "receipt": pretty})
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// ---- tail

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
		Use:   "tail [-f] --db PATH",
		Short: "Print the last receipts, and with -f the ones appended after",
		Long: `tail prints the last receipts. With -f it keeps printing what is appended:
while the agent runs and holds the file (bbolt lets no other reader in), it
follows the log through the agent's status socket (--socket); otherwise it
reopens the file read-only every --interval.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
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

// ---- export

type exportOptions struct {
	db dbOptions
	// format is the export format; only jsonl exists.
	format string
	// out is the file to write; "" or "-" is standard output.
	out string
}

func (o *exportOptions) AddFlags(fs *pflag.FlagSet) {
	o.db.AddFlags(fs)
	fs.StringVar(&o.format, "format", "jsonl", "export format (jsonl)")
	fs.StringVarP(&o.out, "output", "o", "", "write to this file instead of standard output (created, never overwritten)")
}

func newReceiptsExportCommand() *cobra.Command {
	o := &exportOptions{}
	cmd := &cobra.Command{
		Use:   "export --db PATH --format jsonl",
		Short: "Stream every receipt and checkpoint as JSON lines, in sequence order",
		Long: `export writes one canonical JSON object per line: each receipt as
{"kind":"receipt","seq":N,"receipt":{...}} and each checkpoint, right after the
last receipt it covers, as {"kind":"checkpoint","checkpoint":{"body":{...},
"signature":"..."}}. The output can be checked without chio-agent
(scripts/verify_export.py does).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.format != "jsonl" {
				return fmt.Errorf("export receipts: format %q not supported (jsonl)", o.format)
			}
			l, err := o.db.open()
			if err != nil {
				return err
			}
			defer l.Close()
			w := cmd.OutOrStdout()
			if o.out != "" && o.out != "-" {
				f, err := os.OpenFile(o.out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
				if err != nil {
					return fmt.Errorf("export receipts: %w", err)
				}
				if err := l.Export(cmd.Context(), f); err != nil {
					f.Close()
					return err
				}
				if err := f.Sync(); err != nil {
					f.Close()
					return fmt.Errorf("export receipts: %w", err)
				}
				return f.Close()
			}
			return l.Export(cmd.Context(), w)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// ---- prove

type proveOptions struct {
	db dbOptions
}

func (o *proveOptions) AddFlags(fs *pflag.FlagSet) { o.db.AddFlags(fs) }

func newReceiptsProveCommand() *cobra.Command {
	o := &proveOptions{}
	cmd := &cobra.Command{
		Use:   "prove SEQ --db PATH",
		Short: "Print the inclusion proof of one receipt against its signed checkpoint",
		Long: `prove prints, as JSON, the receipt, its leaf hash, the audit path and the
signed checkpoint that covers it. To check it offline: hash the canonical
receipt as SHA-256(0x00 || bytes), fold the audit path (SHA-256(0x01 || l || r),
a node without a sibling carried up), compare with the checkpoint's
merkle_root, and check the checkpoint's Ed25519 signature over its canonical
body with the kernel key.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			seq, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil || seq == 0 {
				return fmt.Errorf("prove receipt: %q is not a sequence number", args[0])
			}
			l, err := o.db.open()
			if err != nil {
				return err
			}
			defer l.Close()
			p, err := l.Prove(seq)
			if err != nil {
				return err
			}
			if err := p.Check("", receipts.VerifyReceipt); err != nil {
				return fmt.Errorf("prove receipt seq %d: the proof does not check: %w", seq, err)
			}
			return writeJSON(cmd.OutOrStdout(), p)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// ---- bench

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
	// keyFile holds the signing key when CHIO_SIGNING_KEY is unset. With
	// neither, bench signs with a throwaway key and says so.
	keyFile string
	// checkpointEvery is the checkpoint batch size. Default 100.
	checkpointEvery int
	// lookupEnv reads the environment (os.LookupEnv; tests replace it).
	lookupEnv kernel.LookupEnv
}

func (o *benchOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.path, "db", "", "receipt log to append to (created when missing)")
	fs.IntVar(&o.count, "count", 10000, "receipts to append")
	fs.IntVar(&o.writers, "writers", 16, "concurrent writers")
	fs.StringVar(&o.mode, "mode", "sync", "durability mode: sync or async")
	fs.Float64Var(&o.rate, "rate", 0, "pace all writers to this many receipts/s (0: as fast as possible)")
	fs.StringVar(&o.keyFile, "key-file", "", "signing key file (default: $"+kernel.EnvSigningKey+", else a throwaway key)")
	fs.IntVar(&o.checkpointEvery, "checkpoint-every", 100, "receipts per checkpoint")
}

func newReceiptsBenchCommand() *cobra.Command {
	o := &benchOptions{lookupEnv: os.LookupEnv}
	cmd := &cobra.Command{
		Use:   "bench --db PATH --count N --writers W [--mode sync|async]",
		Short: "Append synthetic signed receipts and report receipts/s and Append latency",
		Long: `bench appends --count synthetic, validly signed egress receipts from --writers
concurrent goroutines, each signing its own receipts, and prints the rate of
durable receipts and the p50/p99 Append latency. The log it writes is an
ordinary log: receipts verify accepts it. Use it on the disk the agent will use
to size a node (docs/receipt-log.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.path == "" {
				return fmt.Errorf("bench receipts: --db is required")
			}
			if o.count <= 0 || o.writers <= 0 || o.rate < 0 {
				return fmt.Errorf("bench receipts: --count and --writers must be > 0, --rate >= 0")
			}
			mode, err := receipts.ParseMode(o.mode)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			key, err := kernel.LoadSigningKey(o.lookupEnv, o.keyFile)
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

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

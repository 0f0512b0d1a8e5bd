package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
)

type verifyOptions struct {
	db dbOptions
	// trusted, when set, is the log's first kernel key (hex), or in a
	// central store the node keys every checkpoint must be signed by;
	// without it verify proves integrity against the keys the evidence
	// names.
	trusted []string
	// json prints the report as JSON.
	json bool
	// sink is a receipt sink to verify instead of a log or central store.
	sink string
}

func (o *verifyOptions) AddFlags(fs *pflag.FlagSet) {
	o.db.AddFlags(fs)
	fs.StringArrayVar(&o.trusted, "trusted-key", nil, "trusted kernel public `key` (hex) the log must be signed with (a central store: repeat for each node); default: the key the log's header names")
	alias(fs, "key", "trusted-key")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON")
	addSinkFlag(fs, &o.sink, "verify every log a receipt sink holds instead: an s3://, gs://, azblob:// or dynamodb:// `URL`")
}

func newReceiptsVerifyCommand() *cobra.Command {
	o := &verifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify [flags]",
		Short: "Check every receipt, checkpoint, Merkle root and the checkpoint chain (of every log in a central store)",
		Long: `verify checks the whole log: every receipt's canonical form, id and signature,
sequence continuity, the indexes, every checkpoint's Merkle root, signature,
previous-checkpoint hash and chain root, and the header. It exits 0 with a
summary when all hold, and 2 naming the first bad sequence number otherwise,
or the damaged page of a file too damaged to read (truncated, garbage pages).

Given a central store, it checks every log in it from scratch, as a witness
ingesting each log's sealed batches afresh would, plus the store's indexes,
and counts the batches kept aside.

Given --sink URL (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX,
azblob://ACCOUNT/CONTAINER/PREFIX or dynamodb://TABLE), it reads every log the
sink holds from its first checkpoint and checks it as a witness would: every
receipt and checkpoint, the Merkle roots, the checkpoint chain and key
rotations. A checkpoint missing before others is a gap, naming the log and
the checkpoint; a record that is not one the sink's writer writes fails too,
naming the object. Checkpoints missing after the last one the sink holds
cannot be told from checkpoints not shipped yet: compare last_seq with the
node's own log.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.sink != "" {
				if o.db.receipts != "" {
					return usageErrorf("verify: --sink and --receipts name two things to verify: give one")
				}
				return o.verifySink(cmd)
			}
			if err := o.db.resolve(); err != nil {
				return err
			}
			s, err := openCentral(o.db.path, central.Options{TrustedKeys: o.trusted, LockTimeout: o.db.lockTimeout})
			if err != nil {
				return err
			}
			if s != nil {
				defer s.Close()
				return o.verifyCentral(cmd, s)
			}
			if len(o.trusted) > 1 {
				return usageErrorf("verify: %s is a local log, signed first by one key: give one --trusted-key", o.db.path)
			}
			trustedKey := ""
			if len(o.trusted) == 1 {
				trustedKey = o.trusted[0]
			}
			l, err := o.db.open()
			if errors.Is(err, receipts.ErrCorrupt) || errors.Is(err, receipts.ErrTampered) {
				// A file too damaged to open fails verification too.
				return &exitError{code: exitVerifyFailed, err: err}
			}
			if err != nil {
				return err
			}
			defer l.Close()
			rep, err := l.Verify(cmd.Context(), receipts.VerifyOptions{TrustedKey: trustedKey})
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

func (o *verifyOptions) verifyCentral(cmd *cobra.Command, s *central.Store) error {
	rep, err := s.Verify(cmd.Context())
	if errors.Is(err, receipts.ErrTampered) || errors.Is(err, receipts.ErrCorrupt) {
		return &exitError{code: exitVerifyFailed, err: fmt.Errorf("verify %s: %w", o.db.path, err)}
	}
	if err != nil {
		return fmt.Errorf("verify %s: %w", o.db.path, err)
	}
	w := cmd.OutOrStdout()
	if o.json {
		return writeJSON(w, rep)
	}
	fmt.Fprintf(w, "ok: central store %s: %d logs\n", o.db.path, len(rep.Logs))
	printLogReports(w, rep.Logs)
	if rep.Rejected > 0 {
		fmt.Fprintf(w, "  %d refused batches kept aside as evidence\n", rep.Rejected)
	}
	return nil
}

// sinkReport is what verify --sink --json prints.
type sinkReport struct {
	Sink string              `json:"sink"`
	Logs []central.LogReport `json:"logs"`
}

func (o *verifyOptions) verifySink(cmd *cobra.Command) error {
	ctx := cmd.Context()
	st, err := openSink(ctx, o.sink)
	if err != nil {
		return err
	}
	defer st.Close()
	logs, err := sinkLogs(ctx, st)
	if err != nil {
		return fmt.Errorf("verify %s: %w", st, err)
	}
	rep := sinkReport{Sink: st.String()}
	for _, id := range logs {
		lr, err := central.VerifyBatches(ctx, id, o.trusted, sinkSource(st, id))
		if err != nil {
			return sinkErr(fmt.Errorf("verify %s: %w", st, err))
		}
		rep.Logs = append(rep.Logs, *lr)
	}
	w := cmd.OutOrStdout()
	if o.json {
		return writeJSON(w, rep)
	}
	fmt.Fprintf(w, "ok: receipt sink %s: %d logs\n", st, len(rep.Logs))
	printLogReports(w, rep.Logs)
	return nil
}

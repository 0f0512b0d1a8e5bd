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
}

func (o *verifyOptions) AddFlags(fs *pflag.FlagSet) {
	o.db.AddFlags(fs)
	fs.StringArrayVar(&o.trusted, "trusted-key", nil, "trusted kernel public `key` (hex) the log must be signed with (a central store: repeat for each node); default: the key the log's header names")
	alias(fs, "key", "trusted-key")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON")
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
and counts the batches kept aside.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
	for _, l := range rep.Logs {
		rotated := ""
		if l.SigningKey != "" {
			rotated = ", rotated to " + l.SigningKey
		}
		fmt.Fprintf(w, "  %s  %d receipts (seq 1-%d, every signature and id checked), %d checkpoints, key %s%s\n",
			l.LogID, l.Verified, l.LastSeq, l.Checkpoints, l.KernelKey, rotated)
	}
	if rep.Rejected > 0 {
		fmt.Fprintf(w, "  %d refused batches kept aside as evidence\n", rep.Rejected)
	}
	return nil
}

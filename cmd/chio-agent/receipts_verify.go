package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/receipts"
)

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
	fs.StringVar(&o.trustedKey, "trusted-key", "", "trusted kernel public `key` (hex) the log must be signed with; default: the key the log's header names")
	alias(fs, "key", "trusted-key")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON")
}

func newReceiptsVerifyCommand() *cobra.Command {
	o := &verifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify [flags]",
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

package main

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/receipts"
)

type proveOptions struct {
	db dbOptions
}

func (o *proveOptions) AddFlags(fs *pflag.FlagSet) { o.db.AddFlags(fs) }

func newReceiptsProveCommand() *cobra.Command {
	o := &proveOptions{}
	cmd := &cobra.Command{
		Use:   "prove SEQ [flags]",
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

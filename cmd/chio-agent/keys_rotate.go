package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/receipts"
)

func newKeysCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Manage the signing key of a receipt log",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newKeysRotateCommand())
	return cmd
}

type keysRotateOptions struct {
	// receipts is the local receipt log to rotate.
	receipts string
	// key is the new signing key file; previousKey the one the log is
	// signed by now. localOnly rotates without previousKey.
	key, previousKey string
	localOnly        bool
}

func (o *keysRotateOptions) AddFlags(fs *pflag.FlagSet) {
	addReceiptsFlag(fs, &o.receipts, defaultReceiptDB, "receipt log `path` to rotate (the agent must be stopped)")
	fs.StringVar(&o.key, "key", "", "the new Ed25519 signing key `file` (chio-agent keygen), which signs the log from now on")
	fs.StringVar(&o.previousKey, "previous-key", "", "the signing key `file` the log is signed by now, which hands the log over")
	fs.BoolVar(&o.localOnly, "local-only", false, "rotate without the previous key: the log verifies locally, but no central store or package import accepts the new key for it")
}

func newKeysRotateCommand() *cobra.Command {
	o := &keysRotateOptions{}
	cmd := &cobra.Command{
		Use:   "rotate --key NEW [--previous-key OLD | --local-only] [--receipts PATH]",
		Short: "Hand a receipt log over to a new signing key, with a statement both keys sign",
		Long: `rotate makes the key in --key the signing key of the receipt log, from its next
receipt on. Stop the agent first (it holds the log), then start it with the new
key.

With --previous-key (the key the log is signed by now), the receipts not yet
sealed are sealed by a checkpoint of the previous key, and a key rotation
statement (chio-agent.key_rotation.v1: the log id, both keys, the first seq the
new key signs, that last checkpoint and its body SHA-256), signed by both keys,
is recorded in the log. The first batch the new key signs carries it to the
central store and into evidence packages, which then accept the new key for
this log.

--local-only rotates without the previous key (lost, or never to be used
again): the log still verifies, but a central store or a package import
refuses the new key's batches for this log, as it must (any trusted node could
otherwise continue the log). Start a new log for the new key instead when its
evidence must reach a central store.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.key == "" {
				return usageErrorf("keys rotate: --key (the new signing key file) is required")
			}
			if (o.previousKey == "") == !o.localOnly {
				return usageErrorf("keys rotate: give --previous-key (the key the log is signed by now), or --local-only to rotate without it")
			}
			key, err := kernel.LoadKeyFile(o.key)
			if err != nil {
				return err
			}
			opts := receipts.Options{Key: key, RotateKey: true}
			if o.previousKey != "" {
				if opts.PreviousKey, err = kernel.LoadKeyFile(o.previousKey); err != nil {
					return err
				}
			}
			l, err := receipts.Open(o.receipts, opts)
			if err != nil {
				return fmt.Errorf("keys rotate: %w", err)
			}
			st, err := l.Stats()
			if cerr := l.Close(); err == nil && !errors.Is(cerr, receipts.ErrClosed) {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("keys rotate: %w", err)
			}
			out := cmd.OutOrStdout()
			last := st.Keys[len(st.Keys)-1]
			if !l.Recovery().Rotated {
				fmt.Fprintf(out, "%s is signed by kernel_key %s already; nothing to do\n", o.receipts, last.KernelKey)
				return nil
			}
			fmt.Fprintf(out, "rotated %s: kernel_key %s signs from seq %d (previous %s)\n", o.receipts, last.KernelKey, last.SinceSeq, last.PreviousKey)
			if len(last.Rotations) == 0 {
				fmt.Fprintln(out, "no rotation statement: a central store will refuse this key for this log")
				return nil
			}
			for _, raw := range last.Rotations {
				r, err := receipts.ParseRotation(raw)
				if err != nil {
					return fmt.Errorf("keys rotate: read the statement back: %w", err)
				}
				fmt.Fprintf(out, "statement: %s -> %s from seq %d, anchored to checkpoint %d (body sha256 %s)\n",
					r.Body.PreviousKey, r.Body.NewKey, r.Body.FirstSeq, r.Body.AnchorCheckpointSeq, r.Body.AnchorCheckpointSHA256)
			}
			return nil
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

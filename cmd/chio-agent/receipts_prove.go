package main

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
)

type proveOptions struct {
	db dbOptions
	// log picks the log of a central store a SEQ belongs to.
	log string
}

func (o *proveOptions) AddFlags(fs *pflag.FlagSet) {
	o.db.AddFlags(fs)
	fs.StringVar(&o.log, "log", "", "central store only: the log `id` SEQ belongs to (not needed for a receipt id, or when the store holds one log)")
}

func newReceiptsProveCommand() *cobra.Command {
	o := &proveOptions{}
	cmd := &cobra.Command{
		Use:   "prove SEQ|ID [flags]",
		Short: "Print the inclusion proof of one receipt against its signed checkpoint",
		Long: `prove prints, as JSON, the receipt, its leaf hash, the audit path and the
signed checkpoint that covers it. The receipt is named by its sequence number
or its id (64 hex digits); in a central store an id is found in any log, a
sequence number in the log --log names. To check it offline: hash the
canonical receipt as SHA-256(0x00 || bytes), fold the audit path
(SHA-256(0x01 || l || r), a node without a sibling carried up), compare with
the checkpoint's merkle_root, and check the checkpoint's Ed25519 signature
over its canonical body with the kernel key.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var seq uint64
			id := ""
			if len(args[0]) == 64 {
				id = args[0]
			} else {
				var err error
				seq, err = strconv.ParseUint(args[0], 10, 64)
				if err != nil || seq == 0 {
					return fmt.Errorf("prove receipt: %q is not a sequence number or a receipt id", args[0])
				}
			}
			if err := o.db.resolve(); err != nil {
				return err
			}
			s, err := openCentral(o.db.path, central.Options{LockTimeout: o.db.lockTimeout})
			if err != nil {
				return err
			}
			var p *receipts.Proof
			if s != nil {
				defer s.Close()
				p, err = o.proveCentral(s, id, seq)
			} else {
				if o.log != "" {
					return usageErrorf("prove receipt: --log needs a central store; %s is a local log", o.db.path)
				}
				p, err = o.proveLocal(id, seq)
			}
			if err != nil {
				return err
			}
			if err := p.Check("", receipts.VerifyReceipt); err != nil {
				return fmt.Errorf("prove receipt seq %d: the proof does not check: %w", p.Seq, err)
			}
			return writeJSON(cmd.OutOrStdout(), p)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func (o *proveOptions) proveLocal(id string, seq uint64) (*receipts.Proof, error) {
	l, err := o.db.open()
	if err != nil {
		return nil, err
	}
	defer l.Close()
	if id != "" {
		e, err := l.Lookup(id)
		if err != nil {
			return nil, err
		}
		seq = e.Seq
	}
	return l.Prove(seq)
}

func (o *proveOptions) proveCentral(s *central.Store, id string, seq uint64) (*receipts.Proof, error) {
	logID := o.log
	if id != "" {
		found, err := s.Find(id)
		if err != nil {
			return nil, err
		}
		if logID == "" && len(found) > 1 {
			return nil, usageErrorf("prove receipt %s: held by %d logs: name one with --log", id, len(found))
		}
		hit := false
		for _, e := range found {
			if logID == "" || e.LogID == logID {
				logID, seq, hit = e.LogID, e.Seq, true
				break
			}
		}
		if !hit {
			return nil, fmt.Errorf("prove receipt %s: not in log %s: %w", id, logID, receipts.ErrNotFound)
		}
	}
	logID, err := centralLogID(s, logID)
	if err != nil {
		return nil, err
	}
	return s.Prove(logID, seq)
}

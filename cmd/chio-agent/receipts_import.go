package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
)

// openCentral opens the central store at path read-only, when path is one;
// nil when it is something else (a local log).
func openCentral(path string, o central.Options) (*central.Store, error) {
	if !central.IsCentral(path) {
		return nil, nil
	}
	o.ReadOnly = true
	return central.Open(path, o)
}

// centralLogID picks the log of a central store a command works on: id
// when given, else the only log stored.
func centralLogID(s *central.Store, id string) (string, error) {
	if id != "" {
		return id, nil
	}
	logs, err := s.Logs()
	if err != nil {
		return "", err
	}
	if len(logs) != 1 {
		return "", usageErrorf("central store %s holds %d logs: name one with --log", s.Path(), len(logs))
	}
	return logs[0].LogID, nil
}

type importOptions struct {
	// receipts is the central store (created when missing).
	receipts string
	// trusted are the node and exporter keys (hex) the store accepts.
	trusted []string
	json    bool
}

func (o *importOptions) AddFlags(fs *pflag.FlagSet) {
	addReceiptsFlag(fs, &o.receipts, "", "central store `file` to import into (created when missing)")
	fs.StringArrayVar(&o.trusted, "trusted-key", nil, "trusted kernel public `key` (hex) of a node or exporter; repeat for several")
	fs.BoolVar(&o.json, "json", false, "print the result as JSON")
}

func newReceiptsImportCommand() *cobra.Command {
	o := &importOptions{}
	cmd := &cobra.Command{
		Use:   "import DIR --receipts CENTRAL --trusted-key KEY [flags]",
		Short: "Verify a federated evidence package and store its log's chain in a central store",
		Long: `import checks the package in DIR whole (the manifest's signature and file
hashes, every receipt, checkpoint and inclusion proof, the chain from checkpoint
1), that its keys are trusted, and stores the log's chain in the central store:
checkpoints stored already are skipped, later ones continue the chain. A
checkpoint that differs from the stored one is a fork: it is refused, naming
both checkpoints, and kept aside as evidence. Importing a package twice
changes nothing. Exits 2 when the package fails verification.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.receipts == "" {
				return usageErrorf("import package: --receipts names no central store")
			}
			if len(o.trusted) == 0 {
				return usageErrorf("import package: no --trusted-key: a witness must name the keys it trusts")
			}
			if _, err := os.Stat(o.receipts); err == nil && !central.IsCentral(o.receipts) {
				return fmt.Errorf("import package: %s is not a central store (a local receipt log?): %w", o.receipts, central.ErrNotCentral)
			}
			s, err := central.Open(o.receipts, central.Options{TrustedKeys: o.trusted})
			if err != nil {
				return err
			}
			defer s.Close()
			res, err := s.Import(cmd.Context(), args[0])
			if errors.Is(err, receipts.ErrTampered) || errors.Is(err, central.ErrPackage) {
				return &exitError{code: exitVerifyFailed, err: err}
			}
			if err != nil {
				return err
			}
			if o.json {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: imported %s into %s: %d checkpoints stored, %d already stored (%d receipts in the package)\n",
				res.Manifest.LogID, o.receipts, res.Stored, res.Duplicate, res.Manifest.Counts.Receipts)
			return nil
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

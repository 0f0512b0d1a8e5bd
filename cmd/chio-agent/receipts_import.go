package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
	"github.com/backbay-labs/chio-agent/receipts/sink"
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
	// sink is a receipt sink to import instead of a package.
	sink string
}

func (o *importOptions) AddFlags(fs *pflag.FlagSet) {
	addReceiptsFlag(fs, &o.receipts, "", "central store `file` to import into (created when missing)")
	fs.StringArrayVar(&o.trusted, "trusted-key", nil, "trusted kernel public `key` (hex) of a node or exporter; repeat for several")
	fs.BoolVar(&o.json, "json", false, "print the result as JSON")
	addSinkFlag(fs, &o.sink, "import every log a receipt sink holds instead of a package: an s3://, gs://, azblob:// or dynamodb:// `URL`")
}

func newReceiptsImportCommand() *cobra.Command {
	o := &importOptions{}
	cmd := &cobra.Command{
		Use:   "import [DIR | --sink URL] --receipts CENTRAL --trusted-key KEY [flags]",
		Short: "Verify a federated evidence package, or a receipt sink's logs, and store them in a central store",
		Long: `import checks the package in DIR whole (the manifest's signature and file
hashes, every receipt, checkpoint and inclusion proof, the chain from checkpoint
1), that its keys are trusted, and stores the log's chain in the central store:
checkpoints stored already are skipped, later ones continue the chain. A
checkpoint that differs from the stored one is a fork: it is refused, naming
both checkpoints, and kept aside as evidence. Importing a package twice
changes nothing. Exits 2 when the package fails verification.

With --sink URL instead of DIR (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX,
azblob://ACCOUNT/CONTAINER/PREFIX or dynamodb://TABLE), it reads every log the
sink holds from its first checkpoint and ingests its batches as the collector
does: each verified, signed by a trusted node key (the batches' own keys,
which --trusted-key names), continuing the log's chain; batches stored
already are counted and skipped, a fork or a gap is refused, kept aside and
ends that log's import (the other logs are imported). Logs sit side by side
in the store. Exits 2 when a batch is refused or a record of the sink is
damaged, after importing what verifies.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			what := "import package"
			if o.sink != "" {
				what = "import sink"
			}
			switch {
			case o.sink != "" && len(args) == 1:
				return usageErrorf("import: DIR and --sink name two things to import: give one")
			case o.sink == "" && len(args) == 0:
				return usageErrorf("import: give a package DIR or --sink URL")
			case o.receipts == "":
				return usageErrorf("%s: --receipts names no central store", what)
			case len(o.trusted) == 0:
				return usageErrorf("%s: no --trusted-key: a witness must name the keys it trusts", what)
			}
			if _, err := os.Stat(o.receipts); err == nil && !central.IsCentral(o.receipts) {
				return fmt.Errorf("%s: %s is not a central store (a local receipt log?): %w", what, o.receipts, central.ErrNotCentral)
			}
			var st sink.Store
			if o.sink != "" {
				var err error
				if st, err = openSink(cmd.Context(), o.sink); err != nil {
					return err
				}
				defer st.Close()
			}
			s, err := central.Open(o.receipts, central.Options{TrustedKeys: o.trusted})
			if err != nil {
				return err
			}
			defer s.Close()
			if st != nil {
				return o.importSink(cmd, st, s)
			}
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

// sinkImportBatch is how many batches import --sink ingests in one
// transaction (central.Store.IngestAll).
const sinkImportBatch = 64

// sinkImport is what import --sink did with one log.
type sinkImport struct {
	LogID string `json:"log_id"`
	// Stored counts the checkpoints the import added (with batches kept
	// aside earlier as gaps that they let follow); Duplicate those stored
	// already; Receipts the receipts read.
	Stored    int `json:"stored"`
	Duplicate int `json:"duplicate"`
	Receipts  int `json:"receipts"`
	// Refused is why the log's import stopped, when it did.
	Refused string `json:"refused,omitempty"`
}

type sinkImportResult struct {
	Sink string       `json:"sink"`
	Logs []sinkImport `json:"logs"`
}

// importSink ingests every log of st into s, in groups of sinkImportBatch
// batches; a log's first refused batch ends that log's import.
func (o *importOptions) importSink(cmd *cobra.Command, st sink.Store, s *central.Store) error {
	ctx := cmd.Context()
	logs, err := sinkLogs(ctx, st)
	if err != nil {
		return fmt.Errorf("import sink %s: %w", st, err)
	}
	res := sinkImportResult{Sink: st.String()}
	var firstRefusal error
	for _, id := range logs {
		li := sinkImport{LogID: id}
		var group []receipts.SealedBatch
		flush := func() error {
			rs, errs, err := s.IngestAll(ctx, group)
			if err != nil {
				return err
			}
			for i, r := range rs {
				if errs[i] != nil {
					return errs[i]
				}
				if r.Duplicate {
					li.Duplicate++
				} else {
					li.Stored += 1 + len(r.Resumed)
				}
				li.Receipts += r.Receipts
			}
			group = group[:0]
			return nil
		}
		err := st.Batches(ctx, id, 0, func(b receipts.SealedBatch) error {
			if group = append(group, b); len(group) == sinkImportBatch {
				return flush()
			}
			return nil
		})
		if err == nil && len(group) > 0 {
			err = flush()
		}
		if err != nil {
			err = sinkErr(fmt.Errorf("import sink %s into %s: %w", st, o.receipts, err))
			var ee *exitError
			if !errors.As(err, &ee) {
				return err // the store or the sink failed, not the evidence
			}
			li.Refused = err.Error()
			if firstRefusal == nil {
				firstRefusal = err
			}
		}
		res.Logs = append(res.Logs, li)
	}
	w := cmd.OutOrStdout()
	if o.json {
		if err := writeJSON(w, res); err != nil {
			return err
		}
	} else {
		for _, li := range res.Logs {
			status := "ok"
			if li.Refused != "" {
				status = "refused"
			}
			fmt.Fprintf(w, "%s: imported %s from %s into %s: %d checkpoints stored, %d already stored (%d receipts read)\n",
				status, li.LogID, st, o.receipts, li.Stored, li.Duplicate, li.Receipts)
		}
	}
	return firstRefusal
}

package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
)

type exportOptions struct {
	db dbOptions
	// format is the export format; only jsonl exists.
	format string
	// out is the file to write; "" or "-" is standard output.
	out string
	// pkg is the evidence package directory to write instead.
	pkg string
	// keyFile signs the package's manifest.
	keyFile string
	// log picks the log of a central store to package.
	log string
}

func (o *exportOptions) AddFlags(fs *pflag.FlagSet) {
	o.db.AddFlags(fs)
	fs.StringVar(&o.format, "format", "jsonl", "export format (jsonl)")
	fs.StringVarP(&o.out, "output", "o", "", "write to this file instead of standard output (created, never overwritten)")
	fs.StringVar(&o.pkg, "package", "", "write a federated evidence package into this new `directory` instead (signed manifest, receipts, checkpoints, inclusion proofs)")
	addKeyFlag(fs, &o.keyFile)
	fs.StringVar(&o.log, "log", "", "central store only: the log `id` to package (default the only log)")
}

func newReceiptsExportCommand() *cobra.Command {
	o := &exportOptions{}
	cmd := &cobra.Command{
		Use:   "export [flags]",
		Short: "Stream every receipt and checkpoint as JSON lines, in sequence order",
		Long: `export writes one canonical JSON object per line: each receipt as
{"kind":"receipt","seq":N,"receipt":{...}} and each checkpoint, right after the
last receipt it covers, as {"kind":"checkpoint","checkpoint":{"body":{...},
"signature":"..."}}. The output can be checked without chio-agent
(scripts/verify_export.py does).

With --package DIR it writes a federated evidence package instead: one log's
chain from checkpoint 1 (sealed receipts only) as receipts.jsonl,
checkpoints.jsonl and proofs.jsonl, and manifest.json listing each file's size
and SHA-256, signed by --key (the node's kernel key; a witness exporting from
a central store signs with its own). 'receipts import' and
scripts/verify_export.py check it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.pkg != "" {
				return o.exportPackage(cmd)
			}
			if o.log != "" {
				return usageErrorf("export receipts: --log goes with --package")
			}
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

func (o *exportOptions) exportPackage(cmd *cobra.Command) error {
	if o.out != "" {
		return usageErrorf("export package: --package and --output exclude each other")
	}
	lookup := o.db.lookup
	if lookup == nil {
		lookup = os.LookupEnv
	}
	c, err := o.db.load(lookup)
	if err != nil {
		return err
	}
	// --key, else CHIO_SIGNING_KEY, else the config's signing_key: flags
	// win, as everywhere.
	var key ed25519.PrivateKey
	if o.keyFile != "" {
		key, err = kernel.LoadKeyFile(o.keyFile)
	} else {
		key, err = kernel.LoadSigningKey(lookup, c.SigningKey)
	}
	if err != nil {
		return fmt.Errorf("export package: %w", err)
	}
	if err := o.db.resolve(); err != nil {
		return err
	}
	ctx := cmd.Context()
	var logID, kernelKey string
	var src central.BatchSource
	s, err := openCentral(o.db.path, central.Options{LockTimeout: o.db.lockTimeout})
	if err != nil {
		return err
	}
	if s != nil {
		defer s.Close()
		if logID, err = centralLogID(s, o.log); err != nil {
			return err
		}
		logs, err := s.Logs()
		if err != nil {
			return err
		}
		for _, l := range logs {
			if l.LogID == logID {
				kernelKey = l.KernelKey
			}
		}
		if kernelKey == "" {
			return fmt.Errorf("export package: log %s: %w", logID, receipts.ErrNotFound)
		}
		src = func(ctx context.Context, fn func(receipts.SealedBatch) error) error {
			return s.Batches(ctx, logID, 0, fn)
		}
	} else {
		if o.log != "" {
			return usageErrorf("export package: --log needs a central store; %s is a local log", o.db.path)
		}
		l, err := o.db.open()
		if err != nil {
			return err
		}
		defer l.Close()
		st, err := l.Stats()
		if err != nil {
			return err
		}
		kernelKey = st.Keys[0].KernelKey
		if logID, err = receipts.LogIDOf(kernelKey); err != nil {
			return err
		}
		src = func(ctx context.Context, fn func(receipts.SealedBatch) error) error {
			return central.LocalBatches(ctx, l, 0, fn)
		}
	}
	m, err := central.WritePackage(ctx, o.pkg, logID, kernelKey, src, key, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "ok: package of %s in %s: %d receipts, %d checkpoints, %d proofs, signed by %s\n",
		m.LogID, o.pkg, m.Counts.Receipts, m.Counts.Checkpoints, m.Counts.Proofs, m.ExporterKey)
	return nil
}

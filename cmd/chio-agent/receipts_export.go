package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

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
		Use:   "export [flags]",
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

package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newSessionsListCommand() *cobra.Command {
	o := &journalOptions{}
	cmd := &cobra.Command{
		Use:   "list [flags]",
		Short: "List the sessions of a journal with their totals",
		Long: `list prints one line per session: its id, epoch, last entry, the totals of its
current epoch (allowed and denied calls, request and response body bytes)
and when it was last active. The totals are the journal's stored heads;
sessions verify recomputes them from the chains.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			j, err := o.open()
			if err != nil {
				return err
			}
			defer j.Close()
			heads, err := j.Heads()
			if err != nil {
				return err
			}
			if o.json {
				return writeJSON(cmd.OutOrStdout(), heads)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SESSION\tEPOCH\tENTRIES\tCALLS\tDENIED\tREQUEST BYTES\tRESPONSE BYTES\tLAST ACTIVE")
			for _, h := range heads {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", h.SessionID, h.Epoch, h.Seq, h.Totals.Calls, h.Totals.Denied,
					h.Totals.RequestBytes, h.Totals.ResponseBytes, time.Unix(h.LastActive, 0).UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

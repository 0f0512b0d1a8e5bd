package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/backbay-labs/chio-agent/kernel/session"
)

func newSessionsShowCommand() *cobra.Command {
	o := &journalOptions{}
	cmd := &cobra.Command{
		Use:   "show ID [flags]",
		Short: "Print one session's head and journal entries",
		Long: `show prints a session's head (where its chain ends, the totals of its
current epoch) and every entry of its chain, as stored: with --json the
entries in their canonical form, entry hash and receipt id included.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if !session.ValidID(id) {
				return usageErrorf("show session: %q is not a session id", id)
			}
			j, err := o.open()
			if err != nil {
				return err
			}
			defer j.Close()
			head, ok, err := j.Head(id)
			if err != nil {
				return err
			}
			entries, err := j.Entries(id)
			if err != nil {
				return err
			}
			if !ok && len(entries) == 0 {
				return fmt.Errorf("show session: %w: no session %q in %s", session.ErrNotFound, id, j.Path())
			}
			w := cmd.OutOrStdout()
			if o.json {
				return writeJSON(w, map[string]any{"head": head, "entries": entries})
			}
			fmt.Fprintf(w, "session %s: epoch %d, %d entries, %d calls allowed, %d denied, %d request bytes, %d response bytes, last active %s\n",
				head.SessionID, head.Epoch, head.Seq, head.Totals.Calls, head.Totals.Denied, head.Totals.RequestBytes,
				head.Totals.ResponseBytes, time.Unix(head.LastActive, 0).UTC().Format(time.RFC3339))
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tEPOCH\tKIND\tTIME\tTOOL\tVERDICT\tREQUEST\tRESPONSE\tENTRY HASH\tRECEIPT")
			for _, e := range entries {
				verdict := "allow"
				if !e.Allowed {
					verdict = "deny (" + e.Guard + ")"
				}
				receipt := short(e.ReceiptID)
				switch e.Kind {
				case session.KindSettle:
					verdict, receipt = "-", fmt.Sprintf("settles %d", e.CallSeq)
				case session.KindSegment:
					verdict, receipt = "-", fmt.Sprintf("held by %s, %s to %s", e.Holder, e.Link, short(e.PrevHash))
				case session.KindHandover:
					verdict, receipt = "-", "handed to "+e.Holder
				}
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", e.Seq, e.Epoch, e.Kind,
					time.Unix(e.Timestamp, 0).UTC().Format(time.RFC3339), e.ToolName, verdict, e.RequestBytes, e.ResponseBytes,
					short(e.EntryHash), receipt)
			}
			return tw.Flush()
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

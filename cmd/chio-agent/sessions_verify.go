package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel/session"
)

type sessionsVerifyOptions struct {
	journalOptions
	// chainOnly skips the receipt log.
	chainOnly bool
}

func (o *sessionsVerifyOptions) AddFlags(fs *pflag.FlagSet) {
	o.journalOptions.AddFlags(fs)
	fs.BoolVar(&o.chainOnly, "chain-only", false, "check the chains and heads only, without the receipt log")
}

func newSessionsVerifyCommand() *cobra.Command {
	o := &sessionsVerifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify [ID] [flags]",
		Short: "Check the hash chain of one session, or of all, against the receipt log",
		Long: `verify re-walks the chain of one session (ID) or of every session: each entry's
sequence, prev_hash and entry_hash, epochs, settle entries, and each stored
head against the totals the chain adds up to. It then checks, in the receipt
log (--receipts), that every call entry's receipt exists and names that
entry (metadata.session.entry_hash): receipts are signed, so a journal
rewritten with fresh hashes fails here. Verify the receipt log itself with
receipts verify. It exits 0 when all hold and 2 naming the first bad entry of
each session otherwise.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := ""
			if len(args) == 1 {
				if id = args[0]; !session.ValidID(id) {
					return usageErrorf("verify session: %q is not a session id", id)
				}
			}
			j, err := o.open()
			if err != nil {
				return err
			}
			defer j.Close()
			var lookup session.ReceiptLookup
			if !o.chainOnly {
				l, err := o.db.open()
				if err != nil {
					return fmt.Errorf("verify sessions: the receipt log (or --chain-only): %w", err)
				}
				defer l.Close()
				lookup = func(id string) ([]byte, error) {
					e, err := l.Lookup(id)
					return e.Receipt, err
				}
			}
			rep, err := j.Verify(cmd.Context(), id, lookup)
			if err != nil {
				return err
			}
			if id != "" && rep.Sessions == 0 {
				return fmt.Errorf("verify session: %w: no session %q in %s", session.ErrNotFound, id, j.Path())
			}
			w := cmd.OutOrStdout()
			if o.json {
				if err := writeJSON(w, rep); err != nil {
					return err
				}
			}
			if !rep.OK() {
				for _, p := range rep.Problems {
					if !o.json {
						fmt.Fprintf(w, "FAIL session %s entry %d: %s\n", p.SessionID, p.Seq, p.Problem)
					}
				}
				return &exitError{code: exitVerifyFailed, err: fmt.Errorf("verify %s: %d of %d sessions fail", j.Path(), len(rep.Problems), rep.Sessions)}
			}
			if !o.json {
				bound := fmt.Sprintf("%d receipts name their entries", rep.Receipts)
				if lookup == nil {
					bound = "receipts not checked (--chain-only)"
				}
				fmt.Fprintf(w, "ok: %s: %d sessions, %d entries, every chain and head checked, %s\n", j.Path(), rep.Sessions, rep.Entries, bound)
				printLinks(w, &rep)
			}
			return nil
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// printLinks reports the segmented chains: each replica's run of a session
// starts with a segment entry (new, linked to the previous holder's
// handover hash, or unlinked) and may end with a handover.
func printLinks(w io.Writer, rep *session.Report) {
	if len(rep.Links) == 0 && len(rep.Handovers) == 0 {
		return
	}
	count := map[string]int{}
	for _, l := range rep.Links {
		count[l.Link]++
		if l.Link == session.LinkUnlinked {
			fmt.Fprintf(w, "segment session %s entry %d: unlinked: continues from %s, the last hash %s could prove\n", l.SessionID, l.Seq, l.PrevHash, l.Holder)
		}
	}
	fmt.Fprintf(w, "segments: %d new, %d linked to a handover hash of another replica's journal, %d unlinked; %d handed over\n",
		count[session.LinkNew], count[session.LinkLinked], count[session.LinkUnlinked], len(rep.Handovers))
}

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel/session"
)

type sessionsVerifyOptions struct {
	journalOptions
	// chainOnly skips the receipt log.
	chainOnly bool
	// journals and logs are every --journal and --receipts given (the
	// replicas' journals and receipt logs, verified together).
	journals, logs []string
	// partial: the journals given may not be every replica's; a link to a
	// handover none of them has is reported, not a failure.
	partial bool
	// failUnlinked fails on an unlinked segment.
	failUnlinked bool
}

func (o *sessionsVerifyOptions) AddFlags(fs *pflag.FlagSet) {
	o.journalOptions.AddFlags(fs)
	repeatable(fs, "journal", &o.journal, &o.journals, "repeat for each replica, or name a directory of NAME.sessions.db files, to verify them together")
	repeatable(fs, "receipts", &o.db.receipts, &o.logs, "repeat for each replica, its journal beside it (or the --journal at the same place)")
	fs.BoolVar(&o.chainOnly, "chain-only", false, "check the chains and heads only, without the receipt log")
	fs.BoolVar(&o.partial, "partial", false, "several journals: not every replica's; a link to a handover none of them has is reported, not a failure")
	fs.BoolVar(&o.failUnlinked, "fail-unlinked", false, "fail on a segment continued unlinked (takeover unlinked), not only report it")
}

func newSessionsVerifyCommand() *cobra.Command {
	o := &sessionsVerifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify [ID] [flags]",
		Short: "Check the hash chain of one session, or of all, against the receipt log; with several replicas' journals, the links between them",
		Long: `verify re-walks the chain of one session (ID) or of every session: each entry's
sequence, prev_hash and entry_hash, epochs, settle entries, and each stored
head against the totals the chain adds up to. It then checks, in the receipt
log (--receipts), that every call entry's receipt exists and names that
entry (metadata.session.entry_hash): receipts are signed, so a journal
rewritten with fresh hashes fails here. Verify the receipt log itself with
receipts verify.

With several replicas' journals (--receipts or --journal repeated, or a
directory), each is verified so, then every session is stitched across them:
each linked segment must continue a handover to its holder in exactly one
other journal, starting from the figures that handover's chain adds up to;
a handover continued twice, a session started new twice, or two runs that
are not one after the other deciding calls at overlapping times is a fork.
A link to a handover none of the journals has is unresolved (a failure
unless --partial); an unlinked segment is reported (a failure with
--fail-unlinked); so is a handover no journal given continues.

It exits 0 when all hold and 2 naming the first bad entry of each session
otherwise.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := ""
			if len(args) == 1 {
				if id = args[0]; !session.ValidID(id) {
					return usageErrorf("verify session: %q is not a session id", id)
				}
			}
			several := len(o.journals) > 1 || len(o.logs) > 1
			for _, p := range o.journals {
				if fi, err := os.Stat(p); err == nil && fi.IsDir() {
					several = true
				}
			}
			if several {
				return o.verifySeveral(cmd, id)
			}
			j, err := o.open()
			if err != nil {
				return err
			}
			defer j.Close()
			lookup, closeLog, err := o.receiptLookup(o.db)
			if err != nil {
				return err
			}
			defer closeLog()
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
			if !o.json {
				printVerified(w, j.Path(), &rep, lookup != nil)
			}
			if !rep.OK() {
				return &exitError{code: exitVerifyFailed, err: fmt.Errorf("verify %s: %d of %d sessions fail", j.Path(), len(rep.Problems), rep.Sessions)}
			}
			if n := countLinks(rep.Links, session.LinkUnlinked); o.failUnlinked && n > 0 {
				return &exitError{code: exitVerifyFailed, err: fmt.Errorf("verify %s: %d unlinked segments (--fail-unlinked)", j.Path(), n)}
			}
			return nil
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// receiptLookup opens the receipt log d names, unless --chain-only.
func (o *sessionsVerifyOptions) receiptLookup(d dbOptions) (session.ReceiptLookup, func(), error) {
	if o.chainOnly {
		return nil, func() {}, nil
	}
	l, err := d.open()
	if err != nil {
		return nil, nil, fmt.Errorf("verify sessions: the receipt log (or --chain-only): %w", err)
	}
	return func(id string) ([]byte, error) {
		e, err := l.Lookup(id)
		return e.Receipt, err
	}, func() { l.Close() }, nil
}

// printVerified prints one journal's verification.
func printVerified(w io.Writer, path string, rep *session.Report, receipts bool) {
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "FAIL %s: session %s entry %d: %s\n", path, p.SessionID, p.Seq, p.Problem)
	}
	if !rep.OK() {
		return
	}
	bound := fmt.Sprintf("%d receipts name their entries", rep.Receipts)
	if !receipts {
		bound = "receipts not checked (--chain-only)"
	}
	fmt.Fprintf(w, "ok: %s: %d sessions, %d entries, every chain and head checked, %s\n", path, rep.Sessions, rep.Entries, bound)
	printLinks(w, rep)
}

// replicaFiles is one replica's journal and the receipt log its call
// entries are checked against ("" with --chain-only).
type replicaFiles struct{ journal, receipts string }

// replicas pairs the journals and receipt logs given: journals beside the
// logs when only --receipts is given; the log at the same place, or
// NAME.db beside NAME.sessions.db, when --journal is.
func (o *sessionsVerifyOptions) replicas() ([]replicaFiles, error) {
	var out []replicaFiles
	if len(o.journals) == 0 {
		for _, r := range o.logs {
			d := o.db
			d.receipts, d.path = r, ""
			if err := d.resolve(); err != nil {
				return nil, err
			}
			out = append(out, replicaFiles{journal: session.DefaultPath(d.path), receipts: r})
		}
		return out, nil
	}
	var journals []string
	for _, p := range o.journals {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, usageErrorf("session journal %s: %v", p, err)
		}
		if !fi.IsDir() {
			journals = append(journals, p)
			continue
		}
		found, err := filepath.Glob(filepath.Join(p, "*.sessions.db"))
		if err != nil || len(found) == 0 {
			return nil, usageErrorf("no NAME.sessions.db session journal in directory %s", p)
		}
		journals = append(journals, found...)
	}
	if len(o.logs) > 0 && len(o.logs) != len(journals) {
		return nil, usageErrorf("%d journals and %d receipt logs: give --receipts once per journal, in the same order (or none: each journal's NAME.db beside it)", len(journals), len(o.logs))
	}
	for i, p := range journals {
		r := replicaFiles{journal: p}
		switch {
		case o.chainOnly:
		case len(o.logs) > 0:
			r.receipts = o.logs[i]
		default:
			r.receipts = strings.TrimSuffix(p, ".sessions.db") + ".db"
			if _, err := os.Stat(r.receipts); !strings.HasSuffix(p, ".sessions.db") || err != nil {
				return nil, usageErrorf("no receipt log beside session journal %s (NAME.db for NAME.sessions.db): give --receipts once per journal, or --chain-only", p)
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// severalReport is the JSON of a verification of several journals.
type severalReport struct {
	Journals []journalReport   `json:"journals"`
	Stitched *session.Stitched `json:"stitched"`
}

type journalReport struct {
	Journal string         `json:"journal"`
	Report  session.Report `json:"report"`
}

// verifySeveral verifies each replica's journal, then stitches them.
func (o *sessionsVerifyOptions) verifySeveral(cmd *cobra.Command, id string) error {
	reps, err := o.replicas()
	if err != nil {
		return err
	}
	var journals []*session.Journal
	defer func() {
		for _, j := range journals {
			j.Close()
		}
	}()
	var infos []os.FileInfo
	for _, r := range reps {
		fi, err := os.Stat(r.journal)
		if errors.Is(err, os.ErrNotExist) {
			return usageErrorf("no session journal at %s", r.journal)
		}
		for i, other := range infos {
			if os.SameFile(fi, other) {
				return usageErrorf("session journal %s given twice (as %s)", r.journal, reps[i].journal)
			}
		}
		infos = append(infos, fi)
		j, err := session.Open(r.journal, session.Options{ReadOnly: true, LockTimeout: o.db.lockTimeout})
		if err != nil {
			return err
		}
		journals = append(journals, j)
	}
	w := cmd.OutOrStdout()
	out := severalReport{}
	failed, found := 0, false
	for i, j := range journals {
		d := o.db
		d.receipts, d.path = reps[i].receipts, ""
		lookup, closeLog, err := o.receiptLookup(d)
		if err != nil {
			return fmt.Errorf("%s: %w", j.Path(), err)
		}
		rep, err := j.Verify(cmd.Context(), id, lookup)
		closeLog()
		if err != nil {
			return err
		}
		found = found || rep.Sessions > 0
		failed += len(rep.Problems)
		out.Journals = append(out.Journals, journalReport{Journal: j.Path(), Report: rep})
		if !o.json {
			printVerified(w, j.Path(), &rep, lookup != nil)
		}
	}
	if id != "" && !found {
		return fmt.Errorf("verify session: %w: no session %q in %d journals", session.ErrNotFound, id, len(journals))
	}
	st, err := session.Stitch(cmd.Context(), journals, id)
	if err != nil {
		return err
	}
	out.Stitched = st
	if o.json {
		if err := writeJSON(w, out); err != nil {
			return err
		}
	} else {
		printStitched(w, st)
	}
	f := st.Findings
	var why []string
	if failed > 0 {
		why = append(why, fmt.Sprintf("%d sessions fail in their journal", failed))
	}
	if n := f[session.FindingBroken] + f[session.FindingFork]; n > 0 {
		why = append(why, fmt.Sprintf("%d broken links or figures and %d forks", f[session.FindingBroken], f[session.FindingFork]))
	}
	if n := f[session.FindingUnresolved]; n > 0 && !o.partial {
		why = append(why, fmt.Sprintf("%d links unresolved (--partial: the journals given are not every replica's)", n))
	}
	if n := f[session.FindingUnlinked]; n > 0 && o.failUnlinked {
		why = append(why, fmt.Sprintf("%d unlinked segments (--fail-unlinked)", n))
	}
	if len(why) > 0 {
		return &exitError{code: exitVerifyFailed, err: fmt.Errorf("verify %d session journals: %s", len(journals), strings.Join(why, "; "))}
	}
	return nil
}

// printStitched prints what stitching found, one line a finding, then the
// sums.
func printStitched(w io.Writer, st *session.Stitched) {
	for _, s := range st.Sessions {
		for _, f := range s.Findings {
			fmt.Fprintf(w, "%s session %s: %s entry %d: %s\n", strings.ToUpper(f.Kind), s.SessionID, f.Journal, f.Seq, f.Detail)
		}
	}
	runs := 0
	for _, s := range st.Sessions {
		runs += len(s.Runs)
	}
	fmt.Fprintf(w, "stitched %d sessions over %d journals: %d runs; segments %d new, %d linked (%d resolved to another journal's handover), %d unlinked; %d forks, %d broken, %d unresolved, %d handovers not continued in the journals given\n",
		len(st.Sessions), len(st.Journals), runs, st.Segments[session.LinkNew], st.Segments[session.LinkLinked], st.Resolved, st.Segments[session.LinkUnlinked],
		st.Findings[session.FindingFork], st.Findings[session.FindingBroken], st.Findings[session.FindingUnresolved], st.Findings[session.FindingHanded])
}

func countLinks(ls []session.Link, link string) int {
	n := 0
	for _, l := range ls {
		if l.Link == link {
			n++
		}
	}
	return n
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

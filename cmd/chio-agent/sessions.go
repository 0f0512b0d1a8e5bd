package main

import (
	"errors"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/session"
)

func newSessionsCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "sessions",
		Short: "List, show and verify the session journals a sidecar keeps",
		Long: `sessions reads the session journal (docs/sessions.md) read-only: stop the
sidecar that writes it first, as for the receipt log.`,
	}
	c.AddCommand(newSessionsListCommand(), newSessionsShowCommand(), newSessionsVerifyCommand())
	return c
}

// journalOptions are the flags every sessions command shares. The journal
// is found as the sidecar finds it: --journal, else $CHIO_SESSION_JOURNAL,
// else kernel.yaml's sessions.journal, else beside the receipt log.
type journalOptions struct {
	db dbOptions
	// journal is --journal; "" means not given.
	journal string
	// json prints JSON.
	json bool
}

func (o *journalOptions) AddFlags(fs *pflag.FlagSet) {
	o.db.AddFlags(fs)
	fs.StringVar(&o.journal, "journal", "", "session journal `file` (default $"+config.EnvSessionJournal+", else the config's sessions.journal, else beside the receipt log: NAME.sessions.db)")
	fs.BoolVar(&o.json, "json", false, "print JSON")
}

// open opens the journal read-only.
func (o *journalOptions) open() (*session.Journal, error) {
	if err := o.db.resolve(); err != nil {
		return nil, err
	}
	lookup := o.db.lookup
	if lookup == nil {
		lookup = os.LookupEnv
	}
	c, err := o.db.load(lookup)
	if err != nil {
		return nil, err
	}
	path := config.Pick(lookup, o.journal, config.EnvSessionJournal, c.Sessions.Journal, "")
	if path == "" {
		path = session.DefaultPath(o.db.path)
	} else if path, err = config.ReceiptPath(path); err != nil {
		return nil, usageErrorf("session journal: %v", err)
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, usageErrorf("no session journal at %s (give --journal, or --receipts for the log it sits beside)", path)
	}
	return session.Open(path, session.Options{ReadOnly: true, LockTimeout: o.db.lockTimeout})
}

package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

// One name per concept in every command (the vocabulary the docs use):
//
//	--config          kernel.yaml
//	--key             the Ed25519 signing key file
//	--receipts        the receipt log (a bbolt path or file:// URL)
//	--receipt-mode    sync or async
//	--status-socket   the running agent's status socket
//	--trusted-key     a trusted kernel public key (hex), for verification
//	--sink            a receipt sink URL to read back (s3://, gs://, azblob://, dynamodb://)
//
// Older spellings stay as hidden aliases that warn when used, so that
// scripts written against them keep working.

// defaultReceiptDB is where the node agent (run and exec) keeps its log,
// and where the receipt readers look, unless told otherwise.
const defaultReceiptDB = "/var/lib/chio-agent/receipts.db"

// alias adds a hidden, deprecated spelling of flag name that sets the same
// value; using it prints a warning naming the new spelling.
func alias(fs *pflag.FlagSet, old, name string) {
	f := fs.Lookup(name)
	fs.AddFlag(&pflag.Flag{Name: old, Usage: f.Usage, Value: f.Value, DefValue: f.DefValue, NoOptDefVal: f.NoOptDefVal})
	fs.MarkDeprecated(old, "use --"+name)
}

func addConfigFlag(fs *pflag.FlagSet, p *string) {
	fs.StringVar(p, "config", "", "kernel.yaml `file` (default $"+config.EnvKernelConfigPath+")")
}

func addKeyFlag(fs *pflag.FlagSet, p *string) {
	fs.StringVar(p, "key", "", "Ed25519 signing key `file` written by chio-agent keygen (default $"+config.EnvSigningKey+", a hex seed, else the config's signing_key)")
}

func addReceiptsFlag(fs *pflag.FlagSet, p *string, def, usage string) {
	fs.StringVar(p, "receipts", def, usage)
	alias(fs, "db", "receipts")
}

func addReceiptModeFlag(fs *pflag.FlagSet, p *string) {
	fs.StringVar(p, "receipt-mode", "", "sync (a decision takes effect once its receipt is durable; default) or async")
}

func addStatusSocketFlag(fs *pflag.FlagSet, p *string) {
	fs.StringVar(p, "status-socket", "", "the running agent's status `socket` (default the config's agent.status_socket, else "+agent.DefaultStatusSocket+")")
	alias(fs, "socket", "status-socket")
}

// usageError is a command line that cannot be run: a bad flag value. Its
// exit status is 2, as for an unknown flag.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(format string, a ...any) error {
	return &exitError{code: exitUsage, err: &usageError{fmt.Errorf(format, a...)}}
}

// exitUsage is the exit status of a command line that cannot be run.
const exitUsage = 2

// enumFlags are the flags whose values are a fixed set; shell completion
// offers them wherever a command has such a flag.
var enumFlags = map[string][]string{
	"receipt-mode": {"sync", "async"},
	"log-level":    {"debug", "info", "warn", "error"},
	"log-format":   {"text", "json"},
	"type":         actionTypes,
	"decision":     {"allow", "deny", "none"},
	"format":       {"jsonl"},
}

// registerCompletions walks the tree and registers the values of every
// enumerated flag a command has.
func registerCompletions(c *cobra.Command) {
	for name, values := range enumFlags {
		if c.Flags().Lookup(name) == nil {
			continue
		}
		vs := values
		c.RegisterFlagCompletionFunc(name, func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return vs, cobra.ShellCompDirectiveNoFileComp
		})
	}
	for _, sub := range c.Commands() {
		registerCompletions(sub)
	}
}

// agentConfig finds what a command talking to a running agent needs from
// kernel.yaml: the status socket, and the receipt log and pin directory it
// uses. Flags win, then the config (--config, else $CHIO_KERNEL_CONFIG_PATH),
// then the defaults.
type agentConfig struct {
	// config is kernel.yaml's path; "" reads none.
	config string
	// statusSocket is --status-socket; "" means not given.
	statusSocket string
}

func (o *agentConfig) AddFlags(fs *pflag.FlagSet) {
	addConfigFlag(fs, &o.config)
	addStatusSocketFlag(fs, &o.statusSocket)
}

// load reads kernel.yaml when one is named; an empty Config otherwise.
func (o *agentConfig) load(lookup func(string) (string, bool)) (*config.Config, error) {
	path := config.ConfigPath(o.config, lookup)
	if path == "" {
		return &config.Config{}, nil
	}
	return config.Load(path, lookup)
}

// socket is the status socket: the flag, else the config's, else the default.
func (o *agentConfig) socket(c *config.Config) string { return statusSocket(o.statusSocket, c) }

// statusSocket is the agent's status socket, for run as for the commands
// that talk to it: the flag, else kernel.yaml's, else the default.
func statusSocket(flag string, c *config.Config) string {
	return config.Pick(nil, flag, "", c.Agent.StatusSocket, agent.DefaultStatusSocket)
}

// repeated is a string flag given once or several times: the flag's own
// variable keeps the first value (so one value works as before), all
// gets every one in order.
type repeated struct {
	first *string
	all   *[]string
}

func (r *repeated) Set(v string) error {
	if len(*r.all) == 0 {
		*r.first = v
	}
	*r.all = append(*r.all, v)
	return nil
}
func (r *repeated) String() string { return strings.Join(*r.all, ",") }
func (r *repeated) Type() string   { return "stringArray" }

// repeatable lets flag name of fs (and its aliases) be repeated, each
// value appended to *all; usage says what a repetition means.
func repeatable(fs *pflag.FlagSet, name string, first *string, all *[]string, usage string) {
	f := fs.Lookup(name)
	old, r := f.Value, &repeated{first: first, all: all}
	fs.VisitAll(func(g *pflag.Flag) {
		if g.Value == old {
			g.Value = r
		}
	})
	f.Usage += "; " + usage
}

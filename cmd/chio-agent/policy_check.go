package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// policyCheckOptions are the flags of `policy check`.
type policyCheckOptions struct{}

func (o *policyCheckOptions) AddFlags(*pflag.FlagSet) {}

func newPolicyCheckCommand() *cobra.Command {
	o := &policyCheckOptions{}
	cmd := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy (and its extends chain); print every error with its line",
		Long: `check loads FILE as a HushSpec policy (hushspec 0.1.Z, 0.2.Z or 1.0.Z),
resolves its extends chain and compiles it. A valid policy prints its name and
hash, and a warning for each extension it sets that this engine does not
enforce in full (posture: only states and capabilities; origins, detection:
not at all); an invalid one prints every problem found, each with its file,
line, column, field path and HushSpec error code, and the command exits with
status 1.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0])
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func (o *policyCheckOptions) run(w, warn io.Writer, file string) error {
	p, err := hushspec.LoadFile(file)
	if err != nil {
		printLoadError(w, err)
		return &exitError{code: 1, err: fmt.Errorf("check policy: %s is not valid", file)}
	}
	name := p.Name()
	if name == "" {
		name = "(unnamed)"
	}
	fmt.Fprintf(w, "%s: ok: policy %s, hash %s\n", file, name, p.Hash())
	for _, pat := range p.DeadPathGlobs() {
		fmt.Fprintf(warn, "%s: warning: path glob %q can match no path: targets are normalized before matching and patterns are not (HushSpec core 3.14.1; write it without ./, .., // or a trailing /)\n", file, pat)
	}
	for _, pat := range p.IPWildcards() {
		fmt.Fprintf(warn, "%s: warning: host pattern %q puts a wildcard over an IP address: wildcards never match IP literals (HushSpec core 3.14.2), so it matches nothing\n", file, pat)
	}
	for _, ext := range unenforcedExtensions(p) {
		if ext == "posture" {
			fmt.Fprintf(warn, "%s: warning: extensions.posture is accepted but only partly enforced: states and their capabilities gate actions and conditions; budgets and timeouts are not applied\n", file)
			continue
		}
		fmt.Fprintf(warn, "%s: warning: extensions.%s is accepted but not enforced: this engine decides as if it were absent\n", file, ext)
	}
	return nil
}

// unenforcedExtensions names the extensions (core 9: posture, origins,
// detection) the policy, its extends chain resolved, sets: the engine
// accepts them, and hashes them, but never evaluates them.
func unenforcedExtensions(p *hushspec.Policy) []string {
	b, err := p.Document().CanonicalJSON()
	if err != nil {
		return nil
	}
	var doc struct {
		Extensions map[string]json.RawMessage `json:"extensions"`
	}
	if json.Unmarshal(b, &doc) != nil {
		return nil
	}
	var out []string
	for name, v := range doc.Extensions {
		if string(v) != "null" {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

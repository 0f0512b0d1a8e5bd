package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// policyConformanceOptions are the flags of `policy conformance`.
type policyConformanceOptions struct {
	// json prints the report as one JSON object instead of text.
	json bool
	// verbose prints every failing vector's detail, not just its path.
	verbose bool
}

func (o *policyConformanceOptions) AddFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&o.json, "json", false, "print the report as JSON")
	fs.BoolVarP(&o.verbose, "verbose", "v", false, "print why each failing vector failed")
}

func newPolicyConformanceCommand() *cobra.Command {
	o := &policyConformanceOptions{}
	cmd := &cobra.Command{
		Use:   "conformance DIR",
		Short: "Run a HushSpec conformance corpus; print the level reached per module",
		Long: `conformance runs the HushSpec conformance corpus in DIR (the directory that
holds fixtures/MANIFEST.json) and prints, per module, the conformance level
reached, with the SHA-256 of the manifest that names the corpus (core spec
section 8). Every file the manifest lists is checked against its hash; the
core vectors of Levels 1 to 3 are run (valid and invalid documents with their
error codes, merges, evaluations). A level is reached only when every vector
the manifest assigns to it is present, unaltered and passes: a level whose
vectors the copy lacks is reported incomplete, and levels and modules this
engine does not implement are reported not_attempted. The exit status is 1
when a vector fails.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.OutOrStdout(), args[0])
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func (o *policyConformanceOptions) run(w io.Writer, dir string) error {
	rep, err := hushspec.RunConformance(dir)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("run conformance corpus: %w", err)}
	}
	failed := false
	for _, m := range rep.Modules {
		for _, l := range m.Levels {
			failed = failed || l.Status == hushspec.LevelFail
		}
	}
	if o.json {
		enc := json.NewEncoder(w)
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		o.print(w, rep)
	}
	if failed {
		return &exitError{code: 1, err: fmt.Errorf("conformance: vectors failed in %s", dir)}
	}
	return nil
}

func (o *policyConformanceOptions) print(w io.Writer, rep *hushspec.ConformanceReport) {
	fmt.Fprintf(w, "corpus %s: fixtures %s, manifest sha256 %s\n", rep.Corpus, rep.FixturesVersion, rep.ManifestSHA256)
	for _, m := range rep.Modules {
		attempted := false
		for _, l := range m.Levels {
			attempted = attempted || l.Status != hushspec.LevelNotAttempted
		}
		if !attempted {
			fmt.Fprintf(w, "%s: not attempted (levels 1-%d)\n", m.Module, len(m.Levels))
			continue
		}
		fmt.Fprintf(w, "%s: level %d reached\n", m.Module, m.LevelReached)
		for _, l := range m.Levels {
			if l.Status == hushspec.LevelNotAttempted {
				fmt.Fprintf(w, "  level %d: %s\n", l.Level, l.Status)
				continue
			}
			fmt.Fprintf(w, "  level %d: %s: %d of %d vectors passed", l.Level, l.Status, l.Passed, l.Vectors)
			if len(l.Missing) > 0 {
				fmt.Fprintf(w, ", %d listed in the manifest missing", len(l.Missing))
			}
			fmt.Fprintln(w)
			for _, f := range l.Failures {
				if o.verbose {
					fmt.Fprintf(w, "    FAIL %s: %s\n", f.Path, strings.ReplaceAll(f.Detail, "\n", "\n      "))
				} else {
					fmt.Fprintf(w, "    FAIL %s\n", f.Path)
				}
			}
			if o.verbose {
				for _, p := range l.Missing {
					fmt.Fprintf(w, "    missing %s\n", p)
				}
			}
		}
	}
}

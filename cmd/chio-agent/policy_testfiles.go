package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// policyTestOptions are the flags of `policy test`.
type policyTestOptions struct {
	// verbose also prints one line per passing case.
	verbose bool
}

func (o *policyTestOptions) AddFlags(fs *pflag.FlagSet) {
	fs.BoolVarP(&o.verbose, "verbose", "v", false, "print passing cases too")
}

func newPolicyTestCommand() *cobra.Command {
	o := &policyTestOptions{}
	cmd := &cobra.Command{
		Use:   "test FILE...",
		Short: "Run HushSpec evaluator-test files; print failing cases and a summary",
		Long: `test runs HushSpec evaluator-test files (hushspec_test, policy, cases with
action and expect). Each case is evaluated and compared on decision, and on
matched_rule, reason and posture where the case gives them (the v1 format;
rule_trace and receipt expectations are read, not compared). One line is printed per
failing case, then "N passed, M failed". A file that cannot be loaded counts
as one failure. The exit status is 1 on any failure.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.OutOrStdout(), args)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func (o *policyTestOptions) run(w io.Writer, files []string) error {
	passed, failed := 0, 0
	for _, f := range files {
		tf, err := hushspec.LoadTestFile(f)
		if err != nil {
			failed++
			fes := hushspec.FieldErrors(err)
			if len(fes) == 0 {
				fmt.Fprintf(w, "FAIL %s: %v\n", f, err)
			}
			for _, fe := range fes {
				fmt.Fprintf(w, "FAIL %v\n", fe)
			}
			continue
		}
		for _, r := range tf.Run() {
			if r.Passed() {
				passed++
				if o.verbose {
					fmt.Fprintf(w, "ok   %s:%d: %s\n", f, r.Case.Line, r.Case.Description)
				}
				continue
			}
			failed++
			fmt.Fprintf(w, "FAIL %s:%d: %q: %s\n", f, r.Case.Line, r.Case.Description, strings.Join(r.Failures, "; "))
		}
	}
	fmt.Fprintf(w, "%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return &exitError{code: 1, err: fmt.Errorf("test policy: %d failed", failed)}
	}
	return nil
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

func newPolicyCommand() *cobra.Command {
	p := &cobra.Command{
		Use:   "policy",
		Short: "Check, evaluate and test HushSpec policies",
	}
	p.AddCommand(newPolicyCheckCommand(), newPolicyEvalCommand(), newPolicyTestCommand())
	return p
}

// printLoadError writes every problem of a failed load, one per line, each
// naming its file, line and field; a non-field error (a missing file, an
// extends cycle) is written as it is.
func printLoadError(w io.Writer, err error) {
	fes := hushspec.FieldErrors(err)
	if len(fes) == 0 {
		fmt.Fprintln(w, err)
		return
	}
	for _, fe := range fes {
		fmt.Fprintln(w, fe)
	}
}

// policyCheckOptions are the flags of `policy check`.
type policyCheckOptions struct{}

func (o *policyCheckOptions) AddFlags(*pflag.FlagSet) {}

func newPolicyCheckCommand() *cobra.Command {
	o := &policyCheckOptions{}
	cmd := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy (and its extends chain); print every error with its line",
		Long: `check loads FILE as a HushSpec 0.1.0 policy, resolves its extends chain and
compiles it. A valid policy prints its name and hash; an invalid one prints
every problem found, each with its file, line, column and field path, and the
command exits with status 1.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.OutOrStdout(), args[0])
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func (o *policyCheckOptions) run(w io.Writer, file string) error {
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
	return nil
}

// policyEvalOptions are the flags of `policy eval`: one action.
type policyEvalOptions struct {
	// actionType is the HushSpec action type (egress, tool_call, ...).
	actionType string
	// target is the action's subject: host or URL, path, tool name, command.
	target string
	// content is inline content (file_write data, patch_apply diff).
	content string
	// contentFile reads content from a file ("-" for stdin) instead.
	contentFile string
	// argsSize is a tool call's serialized argument size in bytes.
	argsSize int64
	// origin holds origin fields (provider=..., visibility=...). Accepted
	// for the action model; the origins extension is not evaluated.
	origin map[string]string
	// postureCurrent and postureSignal are the posture input (accepted,
	// not evaluated).
	postureCurrent, postureSignal string
	// panicSentinel makes every decision deny while that file exists.
	panicSentinel string
}

func (o *policyEvalOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.actionType, "type", "", "action type: egress, file_read, file_write, patch_apply, shell_command, tool_call, computer_use, input_inject")
	fs.StringVar(&o.target, "target", "", "action target: host or URL, path, command line, tool name, computer-use action or input type")
	fs.StringVar(&o.content, "content", "", "action content (file_write data, patch_apply diff)")
	fs.StringVar(&o.contentFile, "content-file", "", "read the action content from this file (- for stdin)")
	fs.Int64Var(&o.argsSize, "args-size", 0, "size in bytes of a tool call's serialized arguments")
	fs.StringToStringVar(&o.origin, "origin", nil, "origin fields, e.g. provider=slack,visibility=internal (not evaluated)")
	fs.StringVar(&o.postureCurrent, "posture-current", "", "current posture state (not evaluated)")
	fs.StringVar(&o.postureSignal, "posture-signal", "", "posture signal (not evaluated)")
	fs.StringVar(&o.panicSentinel, "panic-sentinel", "", "deny every action while this file exists")
}

func newPolicyEvalCommand() *cobra.Command {
	o := &policyEvalOptions{}
	cmd := &cobra.Command{
		Use:   "eval FILE --type TYPE --target TARGET",
		Short: "Evaluate one action against a policy and print the decision as JSON",
		Long: `eval loads FILE, evaluates one action and prints one JSON object with the
decision (allow, warn or deny), matched_rule and reason, plus the matching
pattern and the normalized host where they apply. The exit status is 0
whatever the decision; it is 1 only when the policy or the flags are bad.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.InOrStdin(), cmd.OutOrStdout(), args[0])
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func (o *policyEvalOptions) run(stdin io.Reader, w io.Writer, file string) error {
	if o.actionType == "" {
		return errors.New("evaluate policy: --type is required")
	}
	a := hushspec.Action{Type: o.actionType, Target: o.target, Content: o.content, ArgsSize: o.argsSize}
	if o.contentFile != "" {
		if o.content != "" {
			return errors.New("evaluate policy: give --content or --content-file, not both")
		}
		var r io.Reader = stdin
		if o.contentFile != "-" {
			f, err := os.Open(o.contentFile)
			if err != nil {
				return fmt.Errorf("evaluate policy: %w", err)
			}
			defer f.Close()
			r = f
		}
		// Content is held in memory for regex scanning; bound it.
		b, err := io.ReadAll(io.LimitReader(r, 64<<20+1))
		if err != nil {
			return fmt.Errorf("evaluate policy: read content: %w", err)
		}
		if len(b) > 64<<20 {
			return errors.New("evaluate policy: content larger than 64 MiB")
		}
		a.Content = string(b)
	}
	if len(o.origin) > 0 {
		org := &hushspec.Origin{}
		for k, v := range o.origin {
			switch k {
			case "provider":
				org.Provider = v
			case "tenant_id":
				org.TenantID = v
			case "space_id":
				org.SpaceID = v
			case "space_type":
				org.SpaceType = v
			case "visibility":
				org.Visibility = v
			case "sensitivity":
				org.Sensitivity = v
			case "actor_role":
				org.ActorRole = v
			default:
				return fmt.Errorf("evaluate policy: unknown --origin field %q", k)
			}
		}
		a.Origin = org
	}
	if o.postureCurrent != "" || o.postureSignal != "" {
		a.Posture = &hushspec.PostureInput{Current: o.postureCurrent, Signal: o.postureSignal}
	}
	var opts []hushspec.Option
	if o.panicSentinel != "" {
		opts = append(opts, hushspec.WithPanicSentinel(o.panicSentinel))
	}
	p, err := hushspec.LoadFile(file, opts...)
	if err != nil {
		printLoadError(w, err)
		return &exitError{code: 1, err: fmt.Errorf("evaluate policy: %s is not valid", file)}
	}
	enc := json.NewEncoder(w)
	if err := enc.Encode(p.Evaluate(a)); err != nil {
		return fmt.Errorf("evaluate policy: write result: %w", err)
	}
	return nil
}

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
matched_rule and reason where the case gives them. One line is printed per
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

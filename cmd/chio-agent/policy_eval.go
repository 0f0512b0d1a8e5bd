package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// actionTypes are the HushSpec action types (core 5); any other is a usage
// error here, though the engine itself denies it as unknown.
var actionTypes = []string{"egress", "file_read", "file_write", "patch_apply", "shell_command", "tool_call",
	"computer_use", "input_inject", "browser_action", "code_exec", "custom"}

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
	// url is a browser_action's destination.
	url string
	// network and timeoutMS are what a code_exec action requests.
	network   bool
	timeoutMS int64
	// context is the runtime context `when` conditions read, as a JSON
	// object ("-": none).
	context string
	// postureCurrent and postureSignal are the action's posture input.
	postureCurrent, postureSignal string
	// panicSentinel makes every decision deny while that file exists.
	panicSentinel string
}

func (o *policyEvalOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.actionType, "type", "", "action type (required): "+strings.Join(actionTypes, ", "))
	fs.StringVar(&o.target, "target", "", "action target: host or URL, path, command line, tool name, computer-use action or input type")
	fs.StringVar(&o.content, "content", "", "action content (file_write data, patch_apply diff)")
	fs.StringVar(&o.contentFile, "content-file", "", "read the action content from this file (- for stdin)")
	fs.Int64Var(&o.argsSize, "args-size", 0, "size in bytes of a tool call's serialized arguments")
	fs.StringVar(&o.url, "url", "", "a browser_action's destination URL")
	fs.BoolVar(&o.network, "network", false, "a code_exec action requests network access")
	fs.Int64Var(&o.timeoutMS, "timeout-ms", 0, "a code_exec action's requested execution time in milliseconds")
	fs.StringVar(&o.context, "context", "", `runtime context for when conditions, a JSON object (e.g. '{"environment":"production","counters":{"shell":3}}')`)
	fs.StringVar(&o.postureCurrent, "posture-current", "", "the posture state the action is evaluated in (default: the policy's initial state)")
	fs.StringVar(&o.postureSignal, "posture-signal", "", "the posture signal the action carries")
	fs.StringVar(&o.panicSentinel, "panic-sentinel", "", "deny every action while this file exists")
}

func newPolicyEvalCommand() *cobra.Command {
	o := &policyEvalOptions{}
	cmd := &cobra.Command{
		Use:   "eval FILE --type TYPE [flags]",
		Short: "Evaluate one action against a policy and print the decision as JSON",
		Long: `eval loads FILE, evaluates one action and prints one JSON object with the
decision (allow, warn or deny), matched_rule and reason, plus the matching
pattern, the normalized host and the posture state where they apply. Egress
and tool_call actions are scanned for secrets only when --content or
--content-file is given (even empty). The exit status is 0
whatever the decision; it is 1 when the policy is bad and 2 when the flags
are (an action type the engine does not know included).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.InOrStdin(), cmd.OutOrStdout(), args[0], cmd.Flags().Changed("content"))
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func (o *policyEvalOptions) run(stdin io.Reader, w io.Writer, file string, contentSet bool) error {
	if o.actionType == "" {
		return usageErrorf("evaluate policy: --type is required (%s)", strings.Join(actionTypes, ", "))
	}
	if !slices.Contains(actionTypes, o.actionType) {
		return usageErrorf("evaluate policy: --type %q is not an action type (%s)", o.actionType, strings.Join(actionTypes, ", "))
	}
	a := hushspec.Action{Type: o.actionType, Target: o.target, Content: o.content, HasContent: contentSet,
		ArgsSize: o.argsSize, URL: o.url, Network: o.network, TimeoutMS: o.timeoutMS}
	if o.postureCurrent != "" || o.postureSignal != "" {
		a.Posture = &hushspec.PostureInput{Current: o.postureCurrent, Signal: o.postureSignal}
	}
	if o.context != "" {
		ctx, err := parseContext(o.context)
		if err != nil {
			return usageErrorf("evaluate policy: --context: %v", err)
		}
		a.Context = ctx
	}
	if o.contentFile != "" {
		a.HasContent = true
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

// parseContext reads a runtime context: a JSON object whose numbers become
// int64 when integral and float64 otherwise, as a policy's own are.
func parseContext(s string) (map[string]any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("more than one JSON value")
	}
	m, ok := numbers(v).(map[string]any)
	if !ok {
		return nil, errors.New("not a JSON object")
	}
	return m, nil
}

func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbers(e)
		}
	}
	return v
}

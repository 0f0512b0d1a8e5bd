package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

func newPolicyCommand() *cobra.Command {
	p := &cobra.Command{
		Use:   "policy",
		Short: "Check, evaluate and test HushSpec policies",
	}
	p.AddCommand(newPolicyCheckCommand(), newPolicyEvalCommand(), newPolicyTestCommand(), newPolicyConformanceCommand())
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

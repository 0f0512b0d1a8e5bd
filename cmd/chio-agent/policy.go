package main

import "github.com/spf13/cobra"

func newPolicyCommand() *cobra.Command {
	p := &cobra.Command{
		Use:   "policy",
		Short: "Check, evaluate and test HushSpec policies",
	}
	for _, name := range []string{"check", "eval", "test"} {
		p.AddCommand(&cobra.Command{
			Use:   name,
			Short: "(not implemented yet)",
			RunE:  func(cmd *cobra.Command, _ []string) error { return errNotImplemented(cmd) },
		})
	}
	return p
}

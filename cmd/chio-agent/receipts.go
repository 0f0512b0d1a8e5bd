package main

import "github.com/spf13/cobra"

func newReceiptsCommand() *cobra.Command {
	r := &cobra.Command{
		Use:   "receipts",
		Short: "Verify, list, export and prove receipts in a receipt log",
	}
	for _, name := range []string{"verify", "list", "show", "tail", "export", "prove", "bench"} {
		r.AddCommand(&cobra.Command{
			Use:   name,
			Short: "(not implemented yet)",
			RunE:  func(cmd *cobra.Command, _ []string) error { return errNotImplemented(cmd) },
		})
	}
	return r
}

func newKeygenCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "keygen",
		Short: "Write a new Ed25519 signing key (not implemented yet)",
		RunE:  func(cmd *cobra.Command, _ []string) error { return errNotImplemented(cmd) },
	}
}

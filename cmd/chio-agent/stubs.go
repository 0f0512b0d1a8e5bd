package main

import "github.com/spf13/cobra"

// Commands whose issues have not landed yet. Each says so and exits non-zero.

func newAPICommand() *cobra.Command {
	api := &cobra.Command{
		Use:   "api",
		Short: "HTTP sidecar commands",
	}
	api.AddCommand(&cobra.Command{
		Use:   "protect --upstream URL --spec openapi.yaml --listen ADDR",
		Short: "Reverse-proxy an HTTP API through the kernel (not implemented yet)",
		RunE:  func(cmd *cobra.Command, _ []string) error { return errNotImplemented(cmd) },
	})
	return api
}

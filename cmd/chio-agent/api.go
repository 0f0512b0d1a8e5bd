package main

import (
	"github.com/spf13/cobra"
)

func newAPICommand() *cobra.Command {
	api := &cobra.Command{
		Use:   "api",
		Short: "HTTP sidecar commands",
	}
	api.AddCommand(newAPIProtectCommand(), newAPIHealthCommand())
	return api
}

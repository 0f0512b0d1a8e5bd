package main

import "github.com/spf13/cobra"

// Commands whose issues have not landed yet. Each says so and exits non-zero.

func newExecCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "exec --policy FILE -- CMD [ARGS...]",
		Short: "Run a command in a protected cgroup (not implemented yet)",
		RunE:  func(cmd *cobra.Command, _ []string) error { return errNotImplemented(cmd) },
	}
}

func newRunCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "run --config FILE",
		Short: "Run the node agent daemon (not implemented yet)",
		RunE:  func(cmd *cobra.Command, _ []string) error { return errNotImplemented(cmd) },
	}
}

func newStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show what the running agent has attached, protected and decided (not implemented yet)",
		RunE:  func(cmd *cobra.Command, _ []string) error { return errNotImplemented(cmd) },
	}
}

func newUninstallCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "uninstall",
		Short: "Remove every pinned program, link and map (not implemented yet)",
		RunE:  func(cmd *cobra.Command, _ []string) error { return errNotImplemented(cmd) },
	}
}

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

package main

import (
	"github.com/backbay-labs/chio-agent/agent"
	"github.com/spf13/cobra"
)

func newDemoCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Show the eBPF redirect on this machine with local servers only (needs root)",
		Long: `demo starts a local HTTP API, protects a fresh cgroup with the eBPF connect
hooks, and runs an unmodified curl inside it and outside it: inside, its
connection is intercepted by the agent, attributed to its process and
forwarded; outside, it goes direct. It then closes the agent's listener and
shows the protected curl failing closed. It needs no internet and removes
everything it made.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return agent.RunDemo(cmd.Context(), agent.DemoOptions{Out: cmd.OutOrStdout()})
		},
	}
}

package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/backbay-labs/chio-agent/agent"
)

func newReloadCommand() *cobra.Command {
	o := &agentConfig{}
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Make the running agent reload its policies and workloads, as SIGHUP does",
		Long: `reload asks the running agent over its root-only unix socket to do what SIGHUP
does: read kernel.yaml's workloads and kubernetes: section again and reload
every policy. It waits for the outcome: exit 0 when everything loaded, exit 1
naming what was refused (what was refused keeps its old version in force; the
errors are in status too). Use it where no shell can send a signal, e.g.
` + "`kubectl exec ds/chio-node-agent -- chio-agent reload`" + `.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.load(os.LookupEnv)
			if err != nil {
				return err
			}
			if err := agent.RequestReload(cmd.Context(), o.socket(c)); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "reloaded")
			return nil
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

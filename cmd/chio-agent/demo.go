package main

import (
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
)

type demoOptions struct {
	dir string
}

func (o *demoOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.dir, "dir", "", "keep the demo's receipt log and CA in this directory (default: a temporary one, removed)")
}

func newDemoCommand() *cobra.Command {
	o := &demoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show the node agent end to end on this machine with local servers only (needs root)",
		Long: `demo serves an allowed API and a forbidden one on loopback (HTTPS and HTTP),
protects a fresh cgroup with the eBPF hooks under a built-in HushSpec policy,
and runs unmodified curl and python3 inside it: an allowed call, a denied
HTTPS call (TLS alert), a denied HTTP call (403 naming its receipt), a spoofed
SNI, and a QUIC attempt. It then verifies the signed receipt log. It needs no
internet, no cluster and no configuration, and removes everything it made.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return agent.RunDemo(cmd.Context(), agent.DemoOptions{Out: cmd.OutOrStdout(), Dir: o.dir})
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

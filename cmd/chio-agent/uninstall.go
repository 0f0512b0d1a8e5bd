package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

type uninstallOptions struct {
	// config is kernel.yaml, read for agent.pin_dir.
	config string
	// pinDir is --pin-dir; "" means the config's, else bpf.DefaultPinDir.
	pinDir string
	socket string
	force  bool
}

func (o *uninstallOptions) AddFlags(fs *pflag.FlagSet) {
	addConfigFlag(fs, &o.config)
	fs.StringVar(&o.pinDir, "pin-dir", "", "bpffs directory the agent pinned under (default the config's agent.pin_dir, else "+bpf.DefaultPinDir+")")
	fs.StringVar(&o.socket, "status-socket", "", "ignored: whether an agent runs is read from the pinned state itself")
	fs.MarkDeprecated("status-socket", "whether an agent runs is read from the pinned state itself")
	alias(fs, "socket", "status-socket")
	fs.MarkDeprecated("socket", "whether an agent runs is read from the pinned state itself")
	fs.BoolVar(&o.force, "force", false, "uninstall even while an agent holds the pinned state, and kill the workloads of dead exec runs")
}

func newUninstallCommand() *cobra.Command {
	o := &uninstallOptions{}
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Detach and remove every program, link and map the node agent pinned",
		Long: `uninstall detaches every link pinned under the pin directory, of every map
layout (layout-<hash> directories, and pins from before layouts were versioned),
and removes the pins, so protected workloads connect directly again
(unprotected, unreceipted). It is how protection is removed from a node:
deleting the agent (its DaemonSet) leaves every protected workload refused.
It refuses, naming the process, while an agent owns the pinned state (a live
process holds its links, maps or programs open, or the pin directory's lock),
whatever status socket that agent uses, unless --force is given: stop the
agent first, or its workloads would lose protection under it.

It also sweeps what dead 'chio-agent exec' runs left under ` + agent.ExecPinRoot + `
(their reaper normally does): pins and cgroups of runs whose exec process is
gone. A dead run whose workload still runs (every connection refused) is named
and left alone; --force kills that workload first, then removes its pins.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var c config.Config
			if path := config.ConfigPath(o.config, os.LookupEnv); path != "" {
				cfg, err := config.Load(path, os.LookupEnv)
				if err != nil {
					return err
				}
				c = *cfg
			}
			o.pinDir = config.Pick(nil, o.pinDir, "", c.Agent.PinDir, bpf.DefaultPinDir)
			if !o.force {
				if err := bpf.CheckOwner(o.pinDir); err != nil {
					return fmt.Errorf("uninstall: %w (stop the agent first, or pass --force)", err)
				}
			}
			w := cmd.OutOrStdout()
			removed, err := bpf.Uninstall(o.pinDir)
			for _, p := range removed {
				fmt.Fprintf(w, "removed %s\n", p)
			}
			if err != nil {
				return err
			}
			if len(removed) == 0 {
				fmt.Fprintf(w, "nothing pinned under %s\n", o.pinDir)
			}
			stale, err := agent.SweepExecRuns(cmd.Context(), o.force)
			var errs []error
			for _, s := range stale {
				switch {
				case s.Removed:
					fmt.Fprintf(w, "removed %s and cgroup %s (a dead exec run)\n", s.PinDir, s.Cgroup)
				case s.Running:
					errs = append(errs, fmt.Errorf("a dead exec run's workload still runs in cgroup %s, every connection refused by the hooks pinned under %s: pass --force to kill it", s.Cgroup, s.PinDir))
				}
			}
			return errors.Join(append(errs, err)...)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/bpf"
	"github.com/backbay-labs/chio-agent/internal/cgroupfs"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

type runOptions struct {
	node         nodeFlags
	pinDir       string
	statusSocket string
	readyFile    string
	metricsAddr  string
}

func (o *runOptions) AddFlags(fs *pflag.FlagSet) {
	o.node.AddFlags(fs)
	fs.StringVar(&o.pinDir, "pin-dir", "", "bpffs directory for pinned programs, links and maps (default the config's, else "+bpf.DefaultPinDir+")")
	addStatusSocketFlag(fs, &o.statusSocket)
	fs.StringVar(&o.readyFile, "ready-file", "", "write this file (the agent's pid) once every workload whose cgroup exists is protected (the others are guarded or watched)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this TCP address (default the config's agent.metrics_addr; always on the status socket)")
}

func newRunCommand() *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run [flags]",
		Short: "Run the node agent: protect the workloads kernel.yaml names",
		Long: `run is the node agent daemon. It attaches the eBPF programs at the cgroup2 root
and pins them (with their maps and links) under the pin directory, protects
every workload kernel.yaml lists (cgroup paths, optionally a network namespace)
and, with a kubernetes: section, every pod on the node the section selects
(found through the CRI socket, followed as pods come and go), and decides, receipts and relays their connections until it is stopped.

A workload's cgroup need not exist: it is reported (status, log, the
chio_agent_workload_state metric) and protected when it appears. A cgroup
removed and made again at its path (a systemd unit restart) is refused in the
kernel until the agent has protected the new one.

Protection outlives the daemon: while it is down, protected workloads' new
connections fail; a restarted daemon adopts the pinned state. The policy is
reloaded on SIGHUP and when its file changes, and SIGHUP reloads
kernel.yaml's workload list too (added, removed and changed workloads); a
bad new policy or workload list is refused and the old one stays in force.
Each of kubernetes.policies is loaded at start (one that does not load stops
it), reloaded when its file changes, and on SIGHUP with the section's
policies, default_policy and exempt_namespaces; a policy that does not load
is refused and the old one keeps deciding its pods. chio-agent uninstall removes the pinned state.

Flags override the CHIO_* variables (CHIO_KERNEL_CONFIG_PATH,
CHIO_POLICY_SOURCE, CHIO_RECEIPT_SINK, CHIO_SIGNING_KEY, CHIO_LOG_LEVEL), which
override kernel.yaml.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			setup, err := o.node.resolve(ctx, "info", "json", cmd.ErrOrStderr(), os.LookupEnv)
			if err != nil {
				return err
			}
			defer setup.close()
			if setup.cfg.Kubernetes != nil {
				// The pods' DNS server: under the DaemonSet's dnsPolicy
				// ClusterFirstWithHostNet, the cluster DNS Service.
				setup.defaultResolvers(resolvConf)
			}
			ac := setup.cfg.Agent
			opts := setup.agentOpts
			opts.PinDir = config.Pick(nil, o.pinDir, "", ac.PinDir, bpf.DefaultPinDir)
			cfgPath := setup.cfgPath
			workloads, err := workloadSpecs(ac.Workloads)
			if err != nil {
				return err
			}
			var kube *agent.KubeOptions
			if k := setup.cfg.Kubernetes; k != nil {
				// Object store policies are polled as the agent's own is.
				srcs := config.NewPolicySources(ctx, setup.cfg.PanicFile, setup.policyWatch.Interval())
				load := srcs.Load
				// Every pod policy before anything is attached: a missing
				// or invalid one stops the start (pods stay as the pinned
				// state left them: refused, never decided by another).
				pols, err := k.LoadPolicies(ctx, load)
				if err != nil {
					return err
				}
				kube = &agent.KubeOptions{Config: k, Policies: pols, LoadPolicy: load, PolicyChanged: srcs.Changed,
					// SIGHUP reads the section again: its policies,
					// default_policy and exempt_namespaces.
					ReloadConfig: func(context.Context) (*config.Kubernetes, error) {
						c, err := config.Load(cfgPath, os.LookupEnv)
						if err != nil {
							return nil, err
						}
						return c.Kubernetes, nil
					}}
			}
			if len(workloads) == 0 && kube == nil {
				return fmt.Errorf("kernel config names no workloads (agent.workloads) and no kubernetes section: nothing to protect")
			}
			if len(opts.Resolvers) == 0 {
				setup.logger.Warn("agent.resolvers is empty: protected workloads cannot reach any DNS server over UDP")
			}
			reloadSig := make(chan os.Signal, 1)
			signal.Notify(reloadSig, syscall.SIGHUP)
			defer signal.Stop(reloadSig)
			watch := ""
			if _, err := os.Stat(setup.policySource); err == nil {
				watch = setup.policySource
			}
			// An object store policy (s3://, gs://, azblob://) is polled
			// for its objects' versions; a change reloads it as a changed
			// file does.
			var policyChanged chan struct{}
			if pw := setup.policyWatch; pw.Polled() {
				policyChanged = make(chan struct{}, 1)
				wctx, stop := context.WithCancel(ctx)
				defer stop()
				go pw.Watch(wctx, func() {
					select {
					case policyChanged <- struct{}{}:
					default: // a reload is pending already
					}
				}, func(err error) {
					setup.logger.WithError(err).Warn("policy source unreachable: the policy in force stays; checking again")
				})
			}
			return agent.RunDaemon(ctx, agent.DaemonOptions{
				Agent:        opts,
				Workloads:    workloads,
				StatusSocket: statusSocket(o.statusSocket, setup.cfg),
				ReloadPolicy: setup.policyWatch.Load,
				// SIGHUP reads kernel.yaml's workloads again (its other
				// settings take a restart).
				ReloadWorkloads: func(ctx context.Context) ([]agent.WorkloadSpec, error) {
					c, err := config.Load(cfgPath, os.LookupEnv)
					if err != nil {
						return nil, err
					}
					ws, err := workloadSpecs(c.Agent.Workloads)
					if err != nil {
						return nil, err
					}
					if len(ws) == 0 && kube == nil {
						return nil, fmt.Errorf("kernel config names no workloads (agent.workloads)")
					}
					return ws, nil
				},
				WatchFile:     watch,
				PolicyChanged: policyChanged,
				Reload:        reloadSig,
				ReadyFile:     o.readyFile,
				MetricsAddr:   config.Pick(nil, o.metricsAddr, "", ac.MetricsAddr, ""),
				Version:       version,
				Kubernetes:    kube,
			})
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// workloadSpecs turns kernel.yaml's workloads into what the agent protects.
func workloadSpecs(ws []config.Workload) ([]agent.WorkloadSpec, error) {
	mnt, err := cgroupfs.Mount()
	if err != nil {
		return nil, err
	}
	var out []agent.WorkloadSpec
	for _, w := range ws {
		cg, err := cgroupfs.Resolve(mnt, w.Cgroup)
		if err != nil {
			return nil, fmt.Errorf("workload %s: %w", w.Name, err)
		}
		spec := agent.WorkloadSpec{Name: w.Name, Cgroup: cg, Netns: w.Netns, Labels: w.Labels,
			EgressPorts: w.Egress.AllowPorts, InboundPorts: w.Inbound.AllowPorts, InboundAll: w.Inbound.AllowAll}
		for _, e := range w.Exempt {
			p, err := config.ParsePrefix(e.CIDR)
			if err != nil {
				return nil, fmt.Errorf("workload %s: %w", w.Name, err)
			}
			protos := []bpf.Proto{bpf.ProtoTCP, bpf.ProtoUDP}
			switch e.Proto {
			case "tcp":
				protos = protos[:1]
			case "udp":
				protos = protos[1:]
			}
			ports := e.Ports
			if len(ports) == 0 {
				ports = []uint16{0}
			}
			for _, pr := range protos {
				for _, port := range ports {
					spec.Exempt = append(spec.Exempt, bpf.VerdictRule{Prefix: p, Port: port, Proto: pr, Verdict: bpf.VerdictExempt})
				}
			}
		}
		out = append(out, spec)
	}
	return out, nil
}

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
)

type execOptions struct {
	node         nodeFlags
	name         string
	quiet        bool
	egressPorts  []uint
	inboundPorts []uint
	inboundAll   bool
}

func (o *execOptions) AddFlags(fs *pflag.FlagSet) {
	o.node.AddFlags(fs)
	fs.StringVar(&o.name, "name", "", "workload name in receipts (default exec/<command>)")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "do not print decisions on stderr")
	fs.UintSliceVar(&o.egressPorts, "egress-allow-ports", nil, "the only destination `ports` CMD may connect to, whatever the policy says of the name; none given: every port")
	fs.UintSliceVar(&o.inboundPorts, "inbound-allow-ports", nil, "local `ports` CMD may bind to and listen on; none given: none")
	fs.BoolVar(&o.inboundAll, "inbound-allow-all", false, "let CMD bind and listen on every port, undecided and unreceipted (danger)")
}

// ports checks a port list from the command line.
func ports(flag string, in []uint) ([]uint16, error) {
	out := make([]uint16, 0, len(in))
	for _, p := range in {
		if p == 0 || p > 65535 {
			return nil, fmt.Errorf("--%s: %d is not a port", flag, p)
		}
		out = append(out, uint16(p))
	}
	return out, nil
}

func newExecCommand() *cobra.Command {
	o := &execOptions{}
	cmd := &cobra.Command{
		Use:   "exec [flags] -- CMD [ARGS...]",
		Short: "Run a command unmodified with every connection it makes decided by policy and receipted",
		Long: `exec makes a fresh cgroup, attaches the eBPF connect hooks to it, and runs CMD
inside: every TCP connection CMD or its children make is redirected to a proxy
in this process, which reads the TLS SNI or HTTP Host, decides by the HushSpec
policy, writes a signed receipt, then forwards or refuses. Its DNS (port 53,
UDP and TCP, any address) is answered by the agent's DNS proxy, which decides
each name by the same policy and forwards allowed ones to the resolvers the
config names (by default, the nameservers of /etc/resolv.conf); other UDP is
refused. Each decision is printed on stderr (a JSON object per line
with --log-format json). Receipts go to --receipts, by default
/var/lib/chio-agent/receipts.db, where the receipts commands look.

exec exits with CMD's status (128+N if a signal N ended it), after killing
whatever CMD left in its cgroup, then removes the cgroup and programs. CMD never
outlives its protection: the programs are pinned under ` + agent.ExecPinRoot + `,
so if exec is killed they keep refusing CMD's connections until a reaper
process (this binary run again) has killed CMD's cgroup and removed them. Needs
root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN).`,
		Example: `  chio-agent keygen --out chio.key
  chio-agent exec --policy policy.yaml --key chio.key -- curl https://api.example.com/`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			egress, err := ports("egress-allow-ports", o.egressPorts)
			if err != nil {
				return err
			}
			inbound, err := ports("inbound-allow-ports", o.inboundPorts)
			if err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			setup, err := o.node.resolve(cmd.Context(), "warn", "text", stderr, os.LookupEnv)
			if err != nil {
				return err
			}
			defer setup.close()
			// Let the command resolve names as it would unprotected.
			setup.defaultResolvers(resolvConf)
			var mu sync.Mutex
			if !o.quiet {
				asJSON := o.node.logFormat == "json"
				setup.agentOpts.OnDecision = func(d agent.Decision) {
					mu.Lock()
					defer mu.Unlock()
					if asJSON {
						// One JSON object per line, as the log's own lines.
						b, _ := json.Marshal(struct {
							Msg string `json:"msg"`
							agent.Decision
						}{"decision", d})
						fmt.Fprintf(stderr, "%s\n", b)
						return
					}
					fmt.Fprintln(stderr, agent.FormatDecision(d))
				}
			}
			code, err := agent.Exec(cmd.Context(), agent.ExecOptions{
				Agent: setup.agentOpts, Name: o.name, Args: args,
				EgressPorts: egress, InboundPorts: inbound, InboundAll: o.inboundAll,
				Stdin: cmd.InOrStdin(), Stdout: cmd.OutOrStdout(), Stderr: stderr,
			})
			if err != nil {
				return err
			}
			if err := setup.close(); err != nil {
				return fmt.Errorf("close receipt log: %w", err)
			}
			if code != 0 {
				return &exitError{code: code, err: fmt.Errorf("%s exited with status %d", args[0], code)}
			}
			return nil
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

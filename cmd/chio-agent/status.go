package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
)

type statusOptions struct {
	// agentConfig finds the socket: --status-socket, else kernel.yaml's.
	agentConfig
	// json prints the status as JSON.
	json bool
	// pod, NAMESPACE/NAME, shows that one discovered pod only.
	pod string
}

func (o *statusOptions) AddFlags(fs *pflag.FlagSet) {
	o.agentConfig.AddFlags(fs)
	fs.BoolVar(&o.json, "json", false, "print the status as JSON")
	fs.StringVar(&o.pod, "pod", "", "show one pod found through the CRI (NAMESPACE/NAME): its state, policy, since when, cgroup, netns and workload")
}

func newStatusCommand() *cobra.Command {
	o := &statusOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what the running agent has attached, protected and decided",
		Long: `status asks the running agent over its root-only unix socket and shows each
program and link (ids, attach point, pin path), the protected workloads, the
pods found through the CRI (kernel.yaml kubernetes:; --pod NS/NAME shows one), the
proxy's listeners, allowed/denied/failed counts, the receipt log's head and last
checkpoint, the policy in force, and the last errors. With no agent running it
says so and exits 1.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.load(os.LookupEnv)
			if err != nil {
				return err
			}
			s, err := agent.QueryStatus(cmd.Context(), o.socket(c))
			if err != nil {
				return err
			}
			if o.pod != "" {
				return showPod(cmd.OutOrStdout(), s, o.pod, o.json)
			}
			if o.json {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			printStatus(cmd.OutOrStdout(), s)
			return nil
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// table writes one aligned table to out, header and then the rows that rows
// writes, and a blank line after it.
func table(out io.Writer, header string, rows func(tw io.Writer)) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	rows(tw)
	tw.Flush()
	fmt.Fprintln(out)
}

func printStatus(out io.Writer, s agent.Status) {
	fmt.Fprintf(out, "chio-agent %s, pid %d, up since %s\n", s.Version, s.PID, s.StartedAt.Format("2006-01-02 15:04:05 MST"))
	fmt.Fprintf(out, "policy     %s (sha256 %s) from %s\n", dash(s.Policy.Name), short(s.Policy.Hash), dash(s.Policy.Source))
	fmt.Fprintf(out, "receipts   %s: last seq %d, %d checkpoints sealing through seq %d, last root %s\n",
		s.Receipts.Path, s.Receipts.LastSeq, s.Receipts.Checkpoints, s.Receipts.SealedSeq, dash(short(s.Receipts.LastCheckpoint)))
	if sh := s.Shipping; sh != nil {
		conn := "connected"
		if !sh.Connected {
			conn = "DISCONNECTED"
		}
		to := sh.Subject + " (" + sh.Stream + ", " + conn + ")"
		if sh.Stream == "" { // a store sink
			to = strings.Join(sh.Servers, ",") + " (" + conn + ")"
		}
		fmt.Fprintf(out, "shipping   to %s: acked checkpoint %d (seq %d), %d of %d batches in flight, lag %d receipts / %.1fs, %d errors\n",
			to, sh.AckedCheckpoint, sh.AckedSeq, sh.InFlight, sh.Window, sh.LagReceipts, sh.LagSeconds, sh.Errors)
		if sh.LastError != "" {
			fmt.Fprintf(out, "shipping   error: %s\n", sh.LastError)
		}
	}
	fmt.Fprintf(out, "decisions  %d allowed, %d denied, %d failed (%d receipt errors)\n",
		s.Counts.Allowed, s.Counts.Denied, s.Counts.Failed, s.Counts.ReceiptErrors)
	fmt.Fprintf(out, "refusals   %d in the kernel: %d receipted, %d lost (ring full %d times, refusal map full %d times), %d receipts failed\n",
		s.Refusals.Refused, s.Refusals.Receipted, s.Refusals.Lost, s.Refusals.RingFull, s.Refusals.MapFull, s.Refusals.Unreceipted)
	fmt.Fprintf(out, "originals  %d pending, %d established (connection-tracking map entries)\n",
		s.Maps.PendingOriginals, s.Maps.EstablishedOriginals)
	if s.Birth != nil {
		fmt.Fprintf(out, "birth      roots %s (unclassified cgroups below them refused the network); %d exempt cgroups\n",
			strings.Join(s.Birth.Roots, ", "), len(s.Birth.Exempt))
	}
	fmt.Fprintln(out)

	table(out, "PROGRAM\tHOOK\tPROG ID\tLINK ID\tCGROUP\tPIN\tADOPTED", func(tw io.Writer) {
		for _, a := range s.Attachments {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%v\n", a.Program, a.Hook, a.ProgID, a.LinkID, a.Cgroup, dash(a.PinPath), a.Adopted)
		}
	})
	table(out, "WORKLOAD\tID\tSTATE\tCGROUP\tCGROUP ID\tNETNS\tLABELS\tEXEMPT RULES", func(tw io.Writer) {
		for _, w := range s.Workloads {
			cgid := "-"
			if w.CgroupID != 0 {
				cgid = fmt.Sprint(w.CgroupID)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\n", w.Name, w.ID, w.State, w.Cgroup, cgid, dash(w.Netns), labels(w.Labels), w.Exempt)
		}
	})
	if len(s.PodPolicies) > 0 {
		table(out, "POD POLICY\tHASH\tPODS\tSOURCE\tLOADED\tRELOAD ERROR", func(tw io.Writer) {
			for _, p := range s.PodPolicies {
				name := p.Name
				if p.Default {
					name += " (default)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", name, short(p.Hash), p.Pods, p.Source,
					p.LoadedAt.Format("2006-01-02 15:04:05"), dash(p.ReloadError))
			}
		})
	}
	if len(s.Pods) > 0 {
		table(out, "POD\tSTATE\tPOLICY\tHASH\tSINCE\tREASON", func(tw io.Writer) {
			for _, p := range s.Pods {
				fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.State, podPolicy(p), dash(short(p.PolicyHash)),
					p.Since.Format("2006-01-02 15:04:05"), p.Reason)
			}
		})
	}
	for _, l := range s.Listeners {
		ns := l.Netns
		if ns == "" {
			ns = "host"
		}
		fmt.Fprintf(out, "listener   %s %s (netns %s)\n", dash(l.Kind), l.Addr, ns)
	}
	if d := s.DNS; d != nil {
		who := "the embedding program's handler"
		if d.Proxy {
			who = "the agent's proxy"
		}
		fmt.Fprintf(out, "dns        answered by %s: %d answered, %d refused (%d of no known workload); %d turned away by a workload's bound, %d unattributed\n",
			who, d.Answered, d.Refused, d.Unreceipted, d.OverBound, d.Unattributed)
	}
	if len(s.Errors) > 0 {
		fmt.Fprintln(out, "\nlast errors:")
		for _, e := range s.Errors {
			fmt.Fprintf(out, "  %s  %s\n", e.Time.Format("15:04:05"), e.Message)
		}
	}
}

func labels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var kv []string
	for k, v := range m {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

func short(h string) string {
	h = strings.TrimPrefix(h, "0x")
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}

// podPolicy is what decides a pod's connections, as status shows it.
func podPolicy(p agent.PodStatus) string {
	switch {
	case p.RefuseAll:
		return "refuse-all"
	case p.Policy == "":
		return "-"
	}
	return p.Policy
}

// showPod prints the pods named NAMESPACE/NAME (one, or several sandboxes of
// a pod made again).
func showPod(out io.Writer, s agent.Status, name string, asJSON bool) error {
	ns, n, ok := strings.Cut(name, "/")
	if !ok || ns == "" || n == "" {
		return fmt.Errorf("status --pod %q: want NAMESPACE/NAME", name)
	}
	var found []agent.PodStatus
	for _, p := range s.Pods {
		if p.Namespace == ns && p.Name == n {
			found = append(found, p)
		}
	}
	if len(found) == 0 {
		return fmt.Errorf("status --pod %s: no such pod found through the CRI (%d pods known)", name, len(s.Pods))
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if len(found) == 1 {
			return enc.Encode(found[0])
		}
		return enc.Encode(found)
	}
	for i, p := range found {
		if i > 0 {
			fmt.Fprintln(out)
		}
		fmt.Fprintf(out, "pod        %s/%s (uid %s)\n", p.Namespace, p.Name, p.UID)
		fmt.Fprintf(out, "state      %s since %s\n", p.State, p.Since.Format("2006-01-02 15:04:05 MST"))
		fmt.Fprintf(out, "policy     %s: %s\n", podPolicy(p), p.Reason)
		if p.PolicyHash != "" {
			fmt.Fprintf(out, "hash       %s\n", p.PolicyHash)
		}
		fmt.Fprintf(out, "sandbox    %s\n", p.SandboxID)
		fmt.Fprintf(out, "cgroup     %s\n", dash(p.Cgroup))
		netns := p.Netns
		if p.HostNetwork {
			netns = "host"
		}
		fmt.Fprintf(out, "netns      %s\n", dash(netns))
		fmt.Fprintf(out, "containers %s\n", dash(strings.Join(p.Containers, ", ")))
		fmt.Fprintf(out, "workload   %s\n", dash(p.Workload))
		if p.Error != "" {
			fmt.Fprintf(out, "error      %s\n", p.Error)
		}
	}
	return nil
}

package agent

import (
	"fmt"
	"slices"

	"github.com/backbay-labs/chio-agent/kernel"
)

// GuardPort refuses a connection to a destination port the workload's
// configuration does not allow (egress.allow_ports), whatever the policy
// said of the name: HushSpec egress patterns carry no ports.
const GuardPort = "ChioAgentPortGuard"

// RuleEgressAllowPorts is the matched rule of a port refusal, named as the
// kernel.yaml key that holds the ports.
const RuleEgressAllowPorts = "egress.allow_ports"

// refuseEgressPort returns the deny outcome of a connection to port when the
// workload restricts its destination ports and port is not among them. The
// policy's own outcome (allowed) is kept in the receipt as the policy
// decision and pattern, so a reader sees that the name was allowed and the
// port was not.
func (w *workload) refuseEgressPort(port uint16, policy kernel.Outcome) (kernel.Outcome, bool) {
	if len(w.egressPorts) == 0 || slices.Contains(w.egressPorts, port) {
		return kernel.Outcome{}, false
	}
	return kernel.Outcome{
		Verdict:        kernel.VerdictDeny,
		PolicyDecision: policy.PolicyDecision,
		Guard:          GuardPort,
		MatchedRule:    RuleEgressAllowPorts,
		Pattern:        policy.Pattern,
		Reason:         fmt.Sprintf("destination port %d is not in the workload's %s %v", port, RuleEgressAllowPorts, w.egressPorts),
	}, true
}

package agent

import (
	"github.com/backbay-labs/chio-agent/kernel"
)

// GuardPort refuses a connection to a destination port the workload's
// configuration does not allow (egress.allow_ports), whatever the policy
// said of the name: HushSpec egress patterns carry no ports.
const GuardPort = kernel.GuardPort

// RuleEgressAllowPorts is the matched rule of a port refusal, named as the
// kernel.yaml key that holds the ports.
const RuleEgressAllowPorts = kernel.RuleEgressAllowPorts

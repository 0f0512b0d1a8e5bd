package cri

import (
	"fmt"
	"slices"

	"github.com/backbay-labs/chio-agent/kernel/config"
)

// Selection is what Select chose for a pod.
type Selection struct {
	// Protect says the pod's traffic goes through the agent. When false the
	// pod is not classified protected: exempt, or not selected.
	Protect bool
	// Policy is the name (a key of kubernetes.policies) of the policy that
	// decides, "" when the pod is not protected or RefuseAll.
	Policy string
	// RefuseAll: protected, and every connection refused, because the pod's
	// label names no known policy.
	RefuseAll bool
	// Reason says why, for status and receipts.
	Reason string
}

// Select chooses a pod's policy from kernel.yaml's kubernetes: section:
//
//   - the agent's own pod (selfUID, when not empty) is exempt;
//   - a pod labelled chio.dev/policy: NAME gets that policy, in any
//     namespace; a NAME that is not a key of policies (including "none" and
//     the empty string) protects the pod with every connection refused;
//   - an unlabelled pod in an exempt namespace is not protected;
//   - any other pod gets default_policy, and is not protected when that is
//     "none".
//
// A label can only add protection: the only way out is an exempt namespace.
func Select(k *config.Kubernetes, pod Pod, selfUID string) Selection {
	if selfUID != "" && pod.UID == selfUID {
		return Selection{Reason: "the agent's own pod"}
	}
	if name, ok := pod.Labels[config.PolicyLabel]; ok {
		if _, known := k.Policies[name]; known {
			return Selection{Protect: true, Policy: name, Reason: fmt.Sprintf("label %s=%s", config.PolicyLabel, name)}
		}
		return Selection{Protect: true, RefuseAll: true,
			Reason: fmt.Sprintf("label %s=%q names no policy in kernel.yaml: every connection refused", config.PolicyLabel, name)}
	}
	if slices.Contains(k.ExemptNamespaces, pod.Namespace) {
		return Selection{Reason: fmt.Sprintf("namespace %s is exempt", pod.Namespace)}
	}
	if k.DefaultPolicy == config.NoPolicy {
		return Selection{Reason: fmt.Sprintf("no %s label and default_policy is none", config.PolicyLabel)}
	}
	return Selection{Protect: true, Policy: k.DefaultPolicy, Reason: "default_policy"}
}

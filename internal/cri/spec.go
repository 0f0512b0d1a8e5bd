package cri

import (
	"encoding/json"
	"fmt"
)

// infoKey is the key of the verbose status's JSON in both containerd's and
// CRI-O's PodSandboxStatus and ContainerStatus answers.
const infoKey = "info"

// verboseInfo is the part of the verbose status this package reads: the OCI
// runtime spec the runtime handed to runc.
type verboseInfo struct {
	PID         int `json:"pid"`
	RuntimeSpec *struct {
		Linux *struct {
			CgroupsPath string `json:"cgroupsPath"`
			Namespaces  []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
		} `json:"linux"`
	} `json:"runtimeSpec"`
}

// specFacts are what a verbose status says of a sandbox or container.
type specFacts struct {
	// CgroupsPath is linux.cgroupsPath as the runtime wrote it.
	CgroupsPath string
	// Netns is the path of the network namespace, "" when the spec joins
	// none (a host-network pod) or makes a fresh one without a path.
	Netns string
	// HasNetNS says the spec has a network namespace entry at all.
	HasNetNS bool
	// PID is the process's pid in the agent's pid namespace, 0 if unknown.
	PID int
}

// parseVerbose reads the OCI runtime spec out of a verbose status's info map.
func parseVerbose(info map[string]string) (specFacts, error) {
	raw, ok := info[infoKey]
	if !ok {
		return specFacts{}, fmt.Errorf("read verbose status: %w (no %q key)", ErrNoSpec, infoKey)
	}
	var v verboseInfo
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return specFacts{}, fmt.Errorf("read verbose status: %w", err)
	}
	if v.RuntimeSpec == nil || v.RuntimeSpec.Linux == nil {
		return specFacts{}, fmt.Errorf("read verbose status: %w", ErrNoSpec)
	}
	f := specFacts{CgroupsPath: v.RuntimeSpec.Linux.CgroupsPath, PID: v.PID}
	for _, ns := range v.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			f.HasNetNS, f.Netns = true, ns.Path
		}
	}
	return f, nil
}

package hushspec

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// Hash returns the lowercase hex SHA-256 of the resolved policy's RFC 8785
// canonical JSON: the document after extends was merged (without extends),
// as written, with no defaults filled in. Receipts carry it as policy_hash.
func (p *Policy) Hash() string { return p.hash }

// CanonicalJSON returns the RFC 8785 form of the resolved document.
func (d *Document) CanonicalJSON() ([]byte, error) {
	b, err := jcs.Marshal(d.tree)
	if err != nil {
		return nil, fmt.Errorf("canonicalize policy: %w", err)
	}
	return b, nil
}

func hashTree(tree map[string]any) (string, error) {
	b, err := (&Document{tree: tree}).CanonicalJSON()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// ruleDefaults are the schema defaults of every rule block (core 3), which
// the canonical projection makes explicit for each block a document has.
// Fields with no default (max_args_size, max_execution_time_ms,
// max_scan_bytes) stay absent.
var ruleDefaults = map[string]map[string]any{
	"forbidden_paths": {"enabled": true, "patterns": []any{}, "exceptions": []any{}},
	"path_allowlist":  {"enabled": false, "read": []any{}, "write": []any{}, "patch": []any{}},
	"egress":          {"enabled": true, "allow": []any{}, "block": []any{}, "default": "block"},
	"secret_patterns": {"enabled": true, "patterns": []any{}, "skip_paths": []any{}},
	"patch_integrity": {"enabled": true, "max_additions": int64(1000), "max_deletions": int64(500),
		"forbidden_patterns": []any{}, "require_balance": false, "max_imbalance_ratio": int64(10)},
	"shell_commands": {"enabled": true, "forbidden_patterns": []any{}},
	"tool_access": {"enabled": true, "allow": []any{}, "block": []any{}, "require_confirmation": []any{},
		"default": "allow"},
	"computer_use":            {"enabled": false, "mode": "guardrail", "allowed_actions": []any{}},
	"remote_desktop_channels": {"enabled": false, "clipboard": false, "file_transfer": false, "audio": true, "drive_mapping": false},
	"input_injection":         {"enabled": false, "allowed_types": []any{}, "require_postcondition_probe": false},
	"browser_automation": {"enabled": false, "allowed_domains": []any{}, "blocked_domains": []any{},
		"allowed_verbs": []any{}, "credential_detection": true, "extra_credential_patterns": []any{}},
	"code_execution": {"enabled": false, "language_allowlist": []any{}, "module_denylist": []any{}, "network_access": false},
}

// ownContentHash is the hex SHA-256 a `#sha256:` extends pin names (core
// 2.3): the document canonicalized on its own, without extends and
// merge_strategy, with the defaults of every rule block it has made
// explicit, as RFC 8785 JSON. The projection of the Canonical Form
// specification is not in the vendored pack; this one reproduces every pin
// of the core corpus. Where it could differ (documents with extensions,
// whose defaults it does not fill), a pin fails to match and the chain is
// refused, which is the fail-closed side.
func ownContentHash(tree map[string]any) (string, error) {
	proj := resolved(tree)
	if rules, ok := proj["rules"].(map[string]any); ok {
		out := make(map[string]any, len(rules))
		for name, b := range rules {
			bm, _ := b.(map[string]any)
			m := make(map[string]any, len(bm)+len(ruleDefaults[name]))
			for k, v := range ruleDefaults[name] {
				m[k] = v
			}
			for k, v := range bm {
				m[k] = v
			}
			out[name] = m
		}
		proj["rules"] = out
	}
	return hashTree(proj)
}

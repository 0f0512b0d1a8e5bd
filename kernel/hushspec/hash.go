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
// 2.3): the canonical content hash of the document on its own, without
// extends and merge_strategy (canonicalProjection, RFC 8785, SHA-256).
func ownContentHash(tree map[string]any) (string, error) {
	return hashTree(canonicalProjection(tree))
}

// canonicalProjection is the projection of the Canonical Form specification
// as far as the core document goes: extends and merge_strategy removed; the
// schema defaults of every rule block present made explicit, and of every
// time_window (timezone UTC); empty arrays and objects of fields with no
// default dropped as if absent (an empty when, days, context, all_of,
// metadata, extensions). It reproduces the core hash vectors vendored in
// testdata and every pin of the corpus. Extension bodies are kept as
// written: their defaults belong to the companion specifications, which are
// not implemented, so a pin over a document with extensions may fail to
// match where the reference would accept it (refused: the fail-closed side).
func canonicalProjection(tree map[string]any) map[string]any {
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
			if w, ok := m["when"].(map[string]any); ok {
				if pw := projectCondition(w); len(pw) > 0 {
					m["when"] = pw
				} else {
					delete(m, "when")
				}
			}
			out[name] = m
		}
		proj["rules"] = out
	}
	if md, ok := proj["metadata"].(map[string]any); ok {
		out := make(map[string]any, len(md))
		for k, v := range md {
			if !emptyContainer(v) {
				out[k] = v
			}
		}
		proj["metadata"] = out
	}
	for _, k := range []string{"rules", "metadata", "extensions"} {
		if v, ok := proj[k]; ok && emptyContainer(v) {
			delete(proj, k)
		}
	}
	return proj
}

// projectCondition projects a `when` condition: timezone defaults to UTC,
// empty fields are dropped, nested conditions are projected likewise.
func projectCondition(c map[string]any) map[string]any {
	out := make(map[string]any, len(c))
	for k, v := range c {
		switch k {
		case "time_window":
			tw, _ := v.(map[string]any)
			w := map[string]any{"timezone": "UTC"}
			for tk, tv := range tw {
				if !emptyContainer(tv) {
					w[tk] = tv
				}
			}
			out[k] = w
		case "all_of", "any_of":
			l, _ := v.([]any)
			if len(l) == 0 {
				continue
			}
			pl := make([]any, len(l))
			for i, x := range l {
				xm, _ := x.(map[string]any)
				pl[i] = projectCondition(xm)
			}
			out[k] = pl
		case "not":
			nm, _ := v.(map[string]any)
			if pn := projectCondition(nm); len(pn) > 0 {
				out[k] = pn
			}
		default:
			if !emptyContainer(v) {
				out[k] = v
			}
		}
	}
	return out
}

func emptyContainer(v any) bool {
	switch x := v.(type) {
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	}
	return false
}

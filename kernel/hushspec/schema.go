package hushspec

// kind is the type a schema position demands.
type kind int

const (
	kString         kind = iota // any string
	kVersion                    // string matching ^0\.\d+\.\d+$
	kBool                       // YAML true/false only
	kInt                        // decimal integer >= min
	kPositiveNumber             // integer or float, > 0, finite
	kEnum                       // one of enum
	kStringList                 // sequence of strings
	kRegexList                  // sequence of regular expressions
	kGlobList                   // sequence of path globs
	kHostList                   // sequence of egress host patterns
	kObject                     // mapping with the fields of obj
	kSecretPatterns             // sequence of SecretPattern objects
	kOpaque                     // any mapping (extension bodies)
	kRegex                      // one regular expression
)

// field describes one position of the HushSpec 0.1.0 schema.
type field struct {
	kind     kind
	enum     []string
	min      int64
	obj      map[string]*field
	required []string
}

var (
	fString  = &field{kind: kString}
	fBool    = &field{kind: kBool}
	fStrings = &field{kind: kStringList}
	fRegexes = &field{kind: kRegexList}
	fGlobs   = &field{kind: kGlobList}
	fHosts   = &field{kind: kHostList}
	fOpaque  = &field{kind: kOpaque}
)

func object(fields map[string]*field, required ...string) *field {
	return &field{kind: kObject, obj: fields, required: required}
}

func enum(values ...string) *field { return &field{kind: kEnum, enum: values} }

// documentSchema is HushSpec core 0.1.0 (sections 2, 3 and 9). The
// browser_automation and code_execution blocks are not in the 0.1.0 text but
// are in the conformance fixtures and the 0.1.0 JSON Schema published with
// them; they are validated, and routed no action type (see docs/policy.md).
var documentSchema = object(map[string]*field{
	"hushspec":       {kind: kVersion},
	"name":           fString,
	"description":    fString,
	"extends":        fString,
	"merge_strategy": enum("replace", "merge", "deep_merge"),
	"rules": object(map[string]*field{
		"forbidden_paths": object(map[string]*field{
			"enabled":    fBool,
			"patterns":   fGlobs,
			"exceptions": fGlobs,
		}),
		"path_allowlist": object(map[string]*field{
			"enabled": fBool,
			"read":    fGlobs,
			"write":   fGlobs,
			"patch":   fGlobs,
		}),
		"egress": object(map[string]*field{
			"enabled": fBool,
			"allow":   fHosts,
			"block":   fHosts,
			"default": enum("allow", "block"),
		}),
		"secret_patterns": object(map[string]*field{
			"enabled": fBool,
			"patterns": {kind: kSecretPatterns, obj: object(map[string]*field{
				"name":        fString,
				"pattern":     {kind: kRegex},
				"severity":    enum("critical", "error", "warn"),
				"description": fString,
			}, "name", "pattern", "severity").obj, required: []string{"name", "pattern", "severity"}},
			"skip_paths": fGlobs,
		}),
		"patch_integrity": object(map[string]*field{
			"enabled":             fBool,
			"max_additions":       {kind: kInt, min: 0},
			"max_deletions":       {kind: kInt, min: 0},
			"forbidden_patterns":  fRegexes,
			"require_balance":     fBool,
			"max_imbalance_ratio": {kind: kPositiveNumber},
		}),
		"shell_commands": object(map[string]*field{
			"enabled":            fBool,
			"forbidden_patterns": fRegexes,
		}),
		"tool_access": object(map[string]*field{
			"enabled":              fBool,
			"allow":                fStrings,
			"block":                fStrings,
			"require_confirmation": fStrings,
			"default":              enum("allow", "block"),
			"max_args_size":        {kind: kInt, min: 1},
		}),
		"computer_use": object(map[string]*field{
			"enabled":         fBool,
			"mode":            enum("observe", "guardrail", "fail_closed"),
			"allowed_actions": fStrings,
		}),
		"remote_desktop_channels": object(map[string]*field{
			"enabled":       fBool,
			"clipboard":     fBool,
			"file_transfer": fBool,
			"audio":         fBool,
			"drive_mapping": fBool,
		}),
		"input_injection": object(map[string]*field{
			"enabled":                     fBool,
			"allowed_types":               fStrings,
			"require_postcondition_probe": fBool,
		}),
		"browser_automation": object(map[string]*field{
			"enabled":                   fBool,
			"allowed_domains":           fHosts,
			"blocked_domains":           fHosts,
			"allowed_verbs":             fStrings,
			"credential_detection":      fBool,
			"extra_credential_patterns": fRegexes,
		}),
		"code_execution": object(map[string]*field{
			"enabled":               fBool,
			"language_allowlist":    fStrings,
			"module_denylist":       fStrings,
			"network_access":        fBool,
			"max_execution_time_ms": {kind: kInt, min: 0},
			"max_scan_bytes":        {kind: kInt, min: 1},
		}),
	}),
	// Core 9.1-9.3: the companion extension specifications are not part of
	// this engine, so their bodies are accepted as opaque mappings (kept for
	// the policy hash and merges) but never evaluated.
	"extensions": object(map[string]*field{
		"posture":   fOpaque,
		"origins":   fOpaque,
		"detection": fOpaque,
	}),
}, "hushspec")

package hushspec

// kind is the type a schema position demands.
type kind int

const (
	kString         kind = iota // any string
	kNonEmpty                   // a string that is not empty (E004)
	kVersion                    // MAJOR.MINOR.PATCH of a supported minor (E002)
	kBool                       // YAML 1.2 Core true/false only
	kUint                       // integer >= 0; a negative one is a type error
	kPosInt                     // integer >= 1 (E004 below)
	kPositiveNumber             // integer or float, > 0, finite
	kEnum                       // one of enum
	kStringList                 // sequence of strings
	kRulePaths                  // non-empty sequence of non-empty strings (E004)
	kRegexList                  // sequence of regular expressions
	kGlobList                   // sequence of path globs
	kHostList                   // sequence of egress host patterns
	kObject                     // mapping with the fields of obj
	kObjectList                 // sequence of objects (elem); unique names when unique is set
	kExtension                  // an extension body: any mapping, `version` reserved
	kRegex                      // one regular expression
	kDate                       // YYYY-MM-DD naming a real day (E011)
	kFramework                  // framework id ^[a-z0-9][a-z0-9.-]*$ (E004)
	kCapability                 // capability identifier (core 3.13, E004)
	kCounter                    // counter identifier (core 3.13, E004)
	kWhen                       // a block's condition object (core 3.13)
	kNot                        // a condition one combinator level down
	kConditions                 // a sequence of condition objects
	kClock                      // HH:MM (E004)
	kTimezone                   // IANA name or fixed offset (E004)
	kDays                       // sequence of day abbreviations (E004)
	kFreeForm                   // a context mapping: any keys, any YAML values
	kAnyValue                   // any YAML value (evaluator-test members not compared)
)

// field describes one position of the HushSpec schema.
type field struct {
	kind     kind
	enum     []string
	obj      map[string]*field
	required []string
	elem     *field // kObjectList
	unique   string // kObjectList: the member that must be unique (E003)
}

var (
	fString   = &field{kind: kString}
	fNonEmpty = &field{kind: kNonEmpty}
	fBool     = &field{kind: kBool}
	fStrings  = &field{kind: kStringList}
	fRegexes  = &field{kind: kRegexList}
	fGlobs    = &field{kind: kGlobList}
	fHosts    = &field{kind: kHostList}
	fExt      = &field{kind: kExtension}
	fUint     = &field{kind: kUint}
	fPosInt   = &field{kind: kPosInt}
	fDate     = &field{kind: kDate}
	fWhen     = &field{kind: kWhen}
	fNot      = &field{kind: kNot}
)

func object(fields map[string]*field, required ...string) *field {
	return &field{kind: kObject, obj: fields, required: required}
}

func enum(values ...string) *field { return &field{kind: kEnum, enum: values} }

// block is a rule block's schema: its own fields plus the two every block
// has (core 3.0).
func block(fields map[string]*field) *field {
	fields["enabled"] = fBool
	fields["when"] = fWhen
	return object(fields)
}

// conditionSchema is a `when` condition object (core 3.13); its nesting is
// counted by the decoder.
var conditionSchema = object(map[string]*field{
	"time_window": object(map[string]*field{
		"start":    {kind: kClock},
		"end":      {kind: kClock},
		"timezone": {kind: kTimezone},
		"days":     {kind: kDays},
	}, "start", "end"),
	"context":    {kind: kFreeForm},
	"all_of":     {kind: kConditions},
	"any_of":     {kind: kConditions},
	"not":        fNot,
	"capability": {kind: kCapability},
	"rate": object(map[string]*field{
		"counter":    {kind: kCounter},
		"threshold":  fUint,
		"comparison": enum("gte", "lt"),
	}, "counter", "threshold", "comparison"),
})

// metadataSchema is core 2.5.
var metadataSchema = object(map[string]*field{
	"author":           fString,
	"approved_by":      fString,
	"approval_date":    fDate,
	"classification":   enum("public", "internal", "confidential", "restricted"),
	"change_ticket":    fString,
	"lifecycle_state":  enum("draft", "review", "approved", "deployed", "deprecated", "archived"),
	"policy_version":   fPosInt,
	"effective_date":   fDate,
	"expiry_date":      fDate,
	"owner":            fString,
	"reviewers":        fStrings,
	"next_review_date": fDate,
	"changelog": {kind: kObjectList, elem: object(map[string]*field{
		"version": fNonEmpty,
		"date":    fDate,
		"summary": fNonEmpty,
		"author":  fString,
	}, "version", "date", "summary")},
	"supersedes": fString,
	"controls": {kind: kObjectList, elem: object(map[string]*field{
		"framework":  {kind: kFramework},
		"control_id": fNonEmpty,
		"rule_paths": {kind: kRulePaths},
		"notes":      fString,
	}, "framework", "control_id", "rule_paths")},
})

// documentSchema is HushSpec core 1.0 (sections 2, 3 and 9), which is also
// the 0.2 format; a 0.1 document is read with it too (versioning.md 4: 0.x
// documents take the semantics of the last 0.x release).
var documentSchema = object(map[string]*field{
	"hushspec":       {kind: kVersion},
	"name":           fString,
	"description":    fString,
	"extends":        fString,
	"merge_strategy": enum("replace", "merge", "deep_merge"),
	"metadata":       metadataSchema,
	"rules": object(map[string]*field{
		"forbidden_paths": block(map[string]*field{
			"patterns":   fGlobs,
			"exceptions": fGlobs,
		}),
		"path_allowlist": block(map[string]*field{
			"read":  fGlobs,
			"write": fGlobs,
			"patch": fGlobs,
		}),
		"egress": block(map[string]*field{
			"allow":   fHosts,
			"block":   fHosts,
			"default": enum("allow", "block"),
		}),
		"secret_patterns": block(map[string]*field{
			"patterns": {kind: kObjectList, unique: "name", elem: object(map[string]*field{
				"name":        fString,
				"pattern":     {kind: kRegex},
				"severity":    enum("critical", "error", "warn"),
				"description": fString,
			}, "name", "pattern", "severity")},
			"skip_paths": fGlobs,
		}),
		"patch_integrity": block(map[string]*field{
			"max_additions":       fUint,
			"max_deletions":       fUint,
			"forbidden_patterns":  fRegexes,
			"require_balance":     fBool,
			"max_imbalance_ratio": {kind: kPositiveNumber},
		}),
		"shell_commands": block(map[string]*field{
			"forbidden_patterns": fRegexes,
		}),
		"tool_access": block(map[string]*field{
			"allow":                fStrings,
			"block":                fStrings,
			"require_confirmation": fStrings,
			"default":              enum("allow", "block"),
			"max_args_size":        fPosInt,
		}),
		"computer_use": block(map[string]*field{
			"mode":            enum("observe", "guardrail", "fail_closed"),
			"allowed_actions": fStrings,
		}),
		"remote_desktop_channels": block(map[string]*field{
			"clipboard":     fBool,
			"file_transfer": fBool,
			"audio":         fBool,
			"drive_mapping": fBool,
		}),
		"input_injection": block(map[string]*field{
			"allowed_types":               fStrings,
			"require_postcondition_probe": fBool,
		}),
		"browser_automation": block(map[string]*field{
			"allowed_domains":           fHosts,
			"blocked_domains":           fHosts,
			"allowed_verbs":             fStrings,
			"credential_detection":      fBool,
			"extra_credential_patterns": fRegexes,
		}),
		"code_execution": block(map[string]*field{
			"language_allowlist":    fStrings,
			"module_denylist":       fStrings,
			"network_access":        fBool,
			"max_execution_time_ms": fUint,
			"max_scan_bytes":        fPosInt,
		}),
	}),
	// Core 9.1-9.3: the companion extension specifications are accepted
	// (kept for the policy hash and merges); only posture states and their
	// capabilities are evaluated (conditions and custom actions need them).
	// Core 9.4: `version` under an extension block is reserved and refused.
	"extensions": object(map[string]*field{
		"posture":   fExt,
		"origins":   fExt,
		"detection": fExt,
	}),
}, "hushspec")

package hushspec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func pack10Files(t *testing.T, pattern string, want int) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(pack10Dir(t), "fixtures", "core", pattern))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != want {
		t.Fatalf("%s: found %d fixture files, want %d", pattern, len(files), want)
	}
	return files
}

// TestLevel1Valid: every core/valid document of the 1.0 pack is accepted
// (core 8, Level 1).
func TestLevel1Valid(t *testing.T) {
	for _, f := range pack10Files(t, "valid/*.yaml", 17) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ParseDocument(data, f); err != nil {
				t.Fatalf("valid fixture rejected: %v", err)
			}
		})
	}
}

// expectedError is a `<name>.expect.yaml` sidecar
// (schemas/hushspec-error-codes.v1.schema.json#/$defs/ExpectedError).
type expectedError struct {
	Reject          bool   `yaml:"reject"`
	Code            string `yaml:"code"`
	MessageContains string `yaml:"message_contains"`
}

// TestLevel1Invalid: every core/invalid document of the 1.0 pack is refused
// with exactly the registered code its sidecar names, and a message holding
// the sidecar's message_contains (core 8, Level 1).
func TestLevel1Invalid(t *testing.T) {
	for _, f := range pack10Files(t, "invalid/*.expect.yaml", 30) {
		doc := strings.TrimSuffix(f, ".expect.yaml") + ".yaml"
		t.Run(filepath.Base(doc), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var want expectedError
			if err := yaml.Unmarshal(raw, &want); err != nil {
				t.Fatalf("sidecar: %v", err)
			}
			if !want.Reject || want.Code == "" {
				t.Fatalf("sidecar does not expect a rejection with a code: %+v", want)
			}
			data, err := os.ReadFile(doc)
			if err != nil {
				t.Fatal(err)
			}
			_, err = ParseDocument(data, filepath.Base(doc))
			if err == nil {
				t.Fatalf("accepted; want %s", want.Code)
			}
			if got := ErrorCode(err); got != want.Code {
				t.Errorf("code %s, want %s: %v", got, want.Code, err)
			}
			if !strings.Contains(err.Error(), want.MessageContains) {
				t.Errorf("message %q lacks %q", err.Error(), want.MessageContains)
			}
			for _, fe := range FieldErrors(err) {
				if fe.Line == 0 {
					t.Errorf("error without a line: %v", fe)
				}
			}
		})
	}
}

package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"
)

func TestExampleRuns(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), t.TempDir(), &out); err != nil {
		t.Fatalf("example failed: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		`(?m)^search_docs\s+allow\s+receipt [0-9a-f]{16} `,
		`(?m)^shell_exec\s+deny\s+receipt [0-9a-f]{16} \(tool is explicitly blocked\)`,
		`(?m)^send_email\s+deny\s+receipt [0-9a-f]{16} `,
		`(?m)^receipt log .* verifies: 3 receipts verified, [1-9]\d* checkpoints$`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("output lacks %s:\n%s", want, out.String())
		}
	}
}

package agent

import (
	"testing"

	"github.com/backbay-labs/chio-agent/bpf"
)

// mustLayout names the directory this binary pins under, in a pin dir.
func mustLayout(t *testing.T) string {
	t.Helper()
	l, err := bpf.Layout()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

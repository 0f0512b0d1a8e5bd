package testutil

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// OtherLayout, as bpf.Options.EditSpec, makes the agent's programs those of
// a binary whose pinned map layout differs: one pinned map (guards) holds
// one more entry. Tests of upgrades load one agent with it and the next
// without.
func OtherLayout(spec *ebpf.CollectionSpec) error {
	m, ok := spec.Maps["guards"]
	if !ok {
		return errors.New("other layout: no guards map")
	}
	m.MaxEntries++
	return nil
}

// LayoutDir returns the layout directory (layout-<hash>) under a pin
// directory, where an agent pins its maps, programs and links, and fails
// the test unless there is exactly one.
func LayoutDir(t testing.TB, pinDir string) string {
	t.Helper()
	entries, err := os.ReadDir(pinDir)
	if err != nil {
		t.Fatalf("read pin dir: %v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 1 || !strings.HasPrefix(names[0], "layout-") {
		t.Fatalf("pin dir %s holds %v; want one layout directory", pinDir, names)
	}
	return filepath.Join(pinDir, names[0])
}

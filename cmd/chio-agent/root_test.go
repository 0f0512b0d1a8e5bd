package main

import (
	"bytes"
	"strings"
	"testing"
)

// run executes the command tree with args and returns its output and error.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// TestVersionPrintsInjectedVersion: `version` and `--version` print the
// version the build injected.
func TestVersionPrintsInjectedVersion(t *testing.T) {
	old := version
	version = "v9.9.9-test"
	t.Cleanup(func() { version = old })
	for _, arg := range []string{"version", "--version"} {
		out, err := run(t, arg)
		if err != nil || out != "chio-agent v9.9.9-test\n" {
			t.Errorf("%s = %q, %v", arg, out, err)
		}
	}
}

func TestHelpListsCommandTree(t *testing.T) {
	out, err := run(t, "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"exec", "run", "status", "uninstall", "policy", "receipts", "api", "demo", "version"} {
		if !strings.Contains(out, "\n  "+c+" ") {
			t.Errorf("--help does not list %q:\n%s", c, out)
		}
	}
}

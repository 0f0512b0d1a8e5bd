package testutil

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestVendoredConformanceIntact checks the vendored conformance data against
// its SHA256SUMS: every listed file present with its exact bytes, and no file
// in the folder that the list does not name.
func TestVendoredConformanceIntact(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "testdata", "conformance")
	f, err := os.Open(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	listed := map[string]bool{"SHA256SUMS": true, "PROVENANCE.md": true}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		want, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(want) != 64 {
			t.Fatalf("SHA256SUMS: malformed line %q", sc.Text())
		}
		listed[name] = true
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != want {
			t.Errorf("%s: sha256 %s, SHA256SUMS says %s: the vendored copy was changed", name, got, want)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(listed) < 40 {
		t.Fatalf("SHA256SUMS lists only %d files", len(listed)-2)
	}
	var extra []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if !listed[filepath.ToSlash(rel)] {
			extra = append(extra, rel)
		}
		return nil
	})
	sort.Strings(extra)
	if len(extra) > 0 {
		t.Errorf("files not in SHA256SUMS: %v", extra)
	}
}

// TestAttackTableNamesRealTests keeps docs/datapath.md's attack table honest:
// every row that says an attack is blocked names at least one test, and every
// test a row names exists.
func TestAttackTableNamesRealTests(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(root, "docs", "datapath.md"))
	if err != nil {
		t.Fatal(err)
	}
	funcs := map[string]bool{}
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "func "); ok {
				if name, _, ok := strings.Cut(rest, "("); ok {
					funcs[name] = true
				}
			}
		}
		return nil
	})
	_, table, ok := strings.Cut(string(doc), "### Attacks tried, and what stops them")
	if !ok {
		t.Fatal("docs/datapath.md has no attack table")
	}
	rows := 0
	for _, line := range strings.Split(table, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 6 || strings.HasPrefix(strings.TrimSpace(cells[1]), "---") || strings.TrimSpace(cells[1]) == "attack" {
			if rows > 0 && !strings.HasPrefix(line, "|") {
				break // the table ended
			}
			continue
		}
		rows++
		result, evidence := cells[3], cells[4]
		var names []string
		for _, f := range strings.Split(evidence, "`") {
			if strings.HasPrefix(f, "Test") || strings.HasPrefix(f, "Fuzz") {
				names = append(names, f)
			}
		}
		if strings.Contains(result, "blocked") && !strings.Contains(result, "not blocked") && len(names) == 0 {
			t.Errorf("row says blocked but names no test: %s", line)
		}
		for _, n := range names {
			if !funcs[n] {
				t.Errorf("row names %s, which no test file defines: %s", n, line)
			}
		}
	}
	if rows < 10 {
		t.Fatalf("attack table has %d rows", rows)
	}
}

func TestExitCode(t *testing.T) {
	if got := ExitCode(t, nil); got != 0 {
		t.Errorf("ExitCode(nil) = %d, want 0", got)
	}
	if got := ExitCode(t, exec.Command("sh", "-c", "exit 3").Run()); got != 3 {
		t.Errorf("ExitCode(exit 3) = %d, want 3", got)
	}
}

package hushspec

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil"
)

// pack10ManifestSHA256 names the HushSpec 1.0 corpus this engine's
// conformance claim is made against (core 8: a claim names the corpus by the
// SHA-256 of fixtures/MANIFEST.json).
const pack10ManifestSHA256 = "206bfa4198e433d20592fd41e3996677ecf03b732ad42b1e39fdf60b8750627f"

// pack10Dir is the vendored HushSpec 1.0 conformance pack.
func pack10Dir(t testing.TB) string {
	t.Helper()
	return filepath.Join(testutil.ConformanceDir(t), "hushspec-1.0")
}

// pack10Manifest is the part of fixtures/MANIFEST.json the tests read.
type pack10Manifest struct {
	FixturesVersion string `json:"fixtures_version"`
	Files           []struct {
		Path     string `json:"path"`
		SHA256   string `json:"sha256"`
		Category string `json:"category"`
		Module   string `json:"module"`
		Level    int    `json:"level"`
	} `json:"files"`
}

// TestPack10Manifest checks the vendored 1.0 pack against its own manifest:
// the manifest is the one the conformance claim names, and every fixture in
// the pack is a file the manifest lists, with the manifest's hash. A fixture
// edited by hand (or by a reformatting editor) fails here even if someone
// also regenerated SHA256SUMS.
func TestPack10Manifest(t *testing.T) {
	dir := pack10Dir(t)
	raw, err := os.ReadFile(filepath.Join(dir, "fixtures", "MANIFEST.json"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	if got := hex.EncodeToString(sum[:]); got != pack10ManifestSHA256 {
		t.Fatalf("MANIFEST.json sha256 %s, want %s", got, pack10ManifestSHA256)
	}
	var m pack10Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("decode manifest: %v", err)
	}
	if m.FixturesVersion != "1.0.0" {
		t.Fatalf("fixtures_version %q, want 1.0.0", m.FixturesVersion)
	}
	want := make(map[string]string, len(m.Files))
	for _, f := range m.Files {
		want[f.Path] = f.SHA256
	}
	checked := 0
	err = filepath.WalkDir(filepath.Join(dir, "fixtures"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == "fixtures/MANIFEST.json" {
			return nil
		}
		w, ok := want[rel]
		if !ok {
			t.Errorf("%s: not in the manifest", rel)
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		s := sha256.Sum256(b)
		if got := hex.EncodeToString(s[:]); got != w {
			t.Errorf("%s: sha256 %s, manifest says %s", rel, got, w)
		}
		checked++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// 45 evaluation vectors (36 of the pack, 9 added from upstream; see
	// PROVENANCE.md), 30 invalid documents and their 30 sidecars,
	// 29 merge files, 17 valid documents, the hash README and three hash
	// vectors (added from upstream).
	if checked != 155 {
		t.Errorf("checked %d fixture files, want 155", checked)
	}
	for _, f := range m.Files {
		if f.Module == "core" && f.Level <= 3 && f.Level >= 1 && f.Category != "evaluation" {
			if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(f.Path))); err != nil {
				t.Errorf("core level %d file %s is missing from the pack", f.Level, f.Path)
			}
		}
	}
	if !strings.HasPrefix(m.Files[0].Path, "fixtures/") {
		t.Errorf("manifest paths are not repository paths: %q", m.Files[0].Path)
	}
}

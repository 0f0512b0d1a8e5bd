package hushspec

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Conformance runs (core 8). A conformance claim is made against a corpus,
// named by the SHA-256 of its fixtures/MANIFEST.json; RunConformance reads
// that manifest, checks every file it lists against its hash, and runs the
// core vectors of Levels 1-3. A level is reached only when every vector the
// manifest assigns to it (and to the levels below) is present, unaltered and
// passes: a vector the corpus copy lacks is a level not reached, never a
// pass.

// Level statuses of a ConformanceReport.
const (
	LevelPass         = "pass"
	LevelFail         = "fail"
	LevelIncomplete   = "incomplete"    // vectors listed in the manifest are missing
	LevelNotAttempted = "not_attempted" // this engine does not implement the level or module
)

// ConformanceReport is the outcome of RunConformance.
type ConformanceReport struct {
	Corpus          string         `json:"corpus"`
	ManifestSHA256  string         `json:"manifest_sha256"`
	FixturesVersion string         `json:"fixtures_version"`
	Modules         []ModuleReport `json:"modules"`
}

// ModuleReport is one module's levels; LevelReached is the highest level
// passed with every level below it.
type ModuleReport struct {
	Module       string        `json:"module"`
	LevelReached int           `json:"level_reached"`
	Levels       []LevelReport `json:"levels"`
}

// LevelReport is one level of one module.
type LevelReport struct {
	Level    int             `json:"level"`
	Status   string          `json:"status"`
	Vectors  int             `json:"vectors"` // vectors run
	Passed   int             `json:"passed"`
	Missing  []string        `json:"missing,omitempty"`
	Failures []VectorFailure `json:"failures,omitempty"`
}

// VectorFailure names a vector that did not pass and why.
type VectorFailure struct {
	Path   string `json:"path"`
	Detail string `json:"detail"`
}

type manifestFile struct {
	Path     string `json:"path"`
	SHA256   string `json:"sha256"`
	Category string `json:"category"`
	Module   string `json:"module"`
	Level    int    `json:"level"`
}

// maxLevel is the highest conformance level this engine attempts.
const maxLevel = 3

// RunConformance runs the corpus rooted at dir (the directory holding
// fixtures/MANIFEST.json).
func RunConformance(dir string) (*ConformanceReport, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "fixtures", "MANIFEST.json"))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	var m struct {
		FixturesVersion string         `json:"fixtures_version"`
		Files           []manifestFile `json:"files"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	sum := sha256.Sum256(raw)
	rep := &ConformanceReport{Corpus: dir, ManifestSHA256: hex.EncodeToString(sum[:]), FixturesVersion: m.FixturesVersion}
	byModule := map[string][]manifestFile{}
	for _, f := range m.Files {
		byModule[f.Module] = append(byModule[f.Module], f)
	}
	names := make([]string, 0, len(byModule))
	for n := range byModule {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		rep.Modules = append(rep.Modules, runModule(dir, n, byModule[n]))
	}
	return rep, nil
}

func runModule(dir, module string, files []manifestFile) ModuleReport {
	mr := ModuleReport{Module: module}
	top := 0
	for _, f := range files {
		top = max(top, f.Level)
	}
	reached := true
	for level := 1; level <= top; level++ {
		var lr LevelReport
		if module != "core" || level > maxLevel {
			lr = LevelReport{Level: level, Status: LevelNotAttempted}
		} else {
			lr = runCoreLevel(dir, level, files)
		}
		if reached && lr.Status == LevelPass {
			mr.LevelReached = level
		} else {
			reached = false
		}
		mr.Levels = append(mr.Levels, lr)
	}
	return mr
}

// runCoreLevel checks every file of the level and runs its vectors.
func runCoreLevel(dir string, level int, files []manifestFile) LevelReport {
	lr := LevelReport{Level: level}
	altered := map[string]bool{}
	var mergeChildren, evalFiles, validFiles, invalidFiles []string
	for _, f := range files {
		if f.Level != level {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			lr.Missing = append(lr.Missing, f.Path)
			continue
		}
		vector := true
		switch {
		case f.Category == "valid":
			validFiles = append(validFiles, f.Path)
		case f.Category == "invalid":
			invalidFiles = append(invalidFiles, f.Path)
		case f.Category == "merge" && strings.HasPrefix(path.Base(f.Path), "child-"):
			mergeChildren = append(mergeChildren, f.Path)
		case f.Category == "evaluation":
			evalFiles = append(evalFiles, f.Path)
		default:
			vector = false
		}
		if s := sha256.Sum256(data); hex.EncodeToString(s[:]) != f.SHA256 {
			// An altered file fails whatever it now holds; an altered
			// vector is still counted as one.
			altered[f.Path] = true
			if !vector {
				lr.Failures = append(lr.Failures, VectorFailure{f.Path, "sha256 differs from the manifest: the copy was altered"})
			}
		}
	}
	run := func(p string, check func(string) error) {
		lr.Vectors++
		if altered[p] {
			lr.Failures = append(lr.Failures, VectorFailure{p, "sha256 differs from the manifest: the copy was altered"})
			return
		}
		if err := check(filepath.Join(dir, filepath.FromSlash(p))); err != nil {
			lr.Failures = append(lr.Failures, VectorFailure{p, err.Error()})
			return
		}
		lr.Passed++
	}
	for _, p := range validFiles {
		run(p, checkValid)
	}
	for _, p := range invalidFiles {
		run(p, checkInvalid)
	}
	for _, p := range mergeChildren {
		run(p, checkMerge)
	}
	for _, p := range evalFiles {
		run(p, checkEvaluation)
	}
	switch {
	case len(lr.Failures) > 0:
		lr.Status = LevelFail
	case len(lr.Missing) > 0:
		lr.Status = LevelIncomplete
	default:
		lr.Status = LevelPass
	}
	return lr
}

func checkValid(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	_, err = ParseDocument(data, filepath.Base(file))
	return err
}

// checkInvalid: the document is refused with the code its
// <name>.expect.yaml sidecar names, and a message holding message_contains.
func checkInvalid(file string) error {
	raw, err := os.ReadFile(strings.TrimSuffix(file, ".yaml") + ".expect.yaml")
	if err != nil {
		return fmt.Errorf("read sidecar: %w", err)
	}
	var want struct {
		Reject          bool   `yaml:"reject"`
		Code            string `yaml:"code"`
		MessageContains string `yaml:"message_contains"`
	}
	if err := yaml.Unmarshal(raw, &want); err != nil {
		return fmt.Errorf("decode sidecar: %w", err)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	_, perr := ParseDocument(data, filepath.Base(file))
	switch {
	case perr == nil:
		return fmt.Errorf("accepted; the sidecar expects %s", want.Code)
	case want.Code != "" && ErrorCode(perr) != want.Code:
		return fmt.Errorf("refused with %s, the sidecar expects %s: %v", ErrorCode(perr), want.Code, perr)
	case !strings.Contains(perr.Error(), want.MessageContains):
		return fmt.Errorf("message %q lacks %q", perr.Error(), want.MessageContains)
	}
	return nil
}

// checkMerge resolves a child-*.yaml and compares it with the
// expected-*.yaml beside it, or, where the directory's fixture.yaml says
// reject, expects the resolution refused.
func checkMerge(file string) error {
	dir := filepath.Dir(file)
	var fixture struct {
		Reject bool `yaml:"reject"`
	}
	if raw, err := os.ReadFile(filepath.Join(dir, "fixture.yaml")); err == nil {
		if err := yaml.Unmarshal(raw, &fixture); err != nil {
			return fmt.Errorf("decode fixture.yaml: %w", err)
		}
	}
	got, err := LoadDocument(file)
	if fixture.Reject {
		if err == nil {
			return errors.New("resolved; the fixture says the chain is refused")
		}
		if ErrorCode(err) != CodeExtends {
			return fmt.Errorf("refused with %s, want %s: %v", ErrorCode(err), CodeExtends, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	expected := filepath.Join(dir, "expected-"+strings.TrimPrefix(filepath.Base(file), "child-"))
	data, err := os.ReadFile(expected)
	if err != nil {
		return err
	}
	want, err := ParseDocument(data, expected)
	if err != nil {
		return fmt.Errorf("parse %s: %w", filepath.Base(expected), err)
	}
	g, err := got.CanonicalJSON()
	if err != nil {
		return err
	}
	w, err := want.CanonicalJSON()
	if err != nil {
		return err
	}
	if !reflect.DeepEqual(g, w) {
		return fmt.Errorf("resolved document differs from %s:\n got  %s\n want %s", filepath.Base(expected), g, w)
	}
	return nil
}

// checkEvaluation runs every case of an evaluator-test file.
func checkEvaluation(file string) error {
	tf, err := LoadTestFile(file)
	if err != nil {
		return err
	}
	var failed []string
	for _, r := range tf.Run() {
		if !r.Passed() {
			failed = append(failed, r.String())
		}
	}
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "\n"))
	}
	return nil
}

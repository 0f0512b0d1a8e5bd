package hushspec

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"

	"github.com/backbay-labs/chio-agent/internal/regfile"
)

// Option configures Parse and LoadFile.
type Option func(*options)

type options struct {
	file          string
	baseDir       string
	panicSentinel string
	ctx           context.Context
}

// WithFilename names the source of the data given to Parse in error
// messages. Default: none.
func WithFilename(name string) Option { return func(o *options) { o.file = name } }

// WithBaseDir lets Parse resolve `extends` against files in dir, as if the
// data had been read from a file there. Default: none, and Parse then rejects
// a document that extends another (a policy with an unresolved base would
// silently lack the base's rules).
func WithBaseDir(dir string) Option { return func(o *options) { o.baseDir = dir } }

// WithPanicSentinel names the panic sentinel file: while a file exists at
// path, every Evaluate returns deny with MatchedRule PanicRule. Evaluate
// checks for it on every call (one stat), so the switch acts on the very next
// decision; an error other than "does not exist" counts as present, since a
// kill switch must fail closed. Default: no sentinel.
func WithPanicSentinel(path string) Option { return func(o *options) { o.panicSentinel = path } }

// WithContext bounds the reading of the policy and the files it extends:
// once ctx is done the load fails with ctx's error, even while a read is
// stalled. Default: context.Background().
func WithContext(ctx context.Context) Option { return func(o *options) { o.ctx = ctx } }

func collect(opts []Option) options {
	o := options{ctx: context.Background()}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Parse validates and compiles one HushSpec document. A document with
// `extends` needs WithBaseDir (or use LoadFile).
func Parse(data []byte, opts ...Option) (*Policy, error) {
	o := collect(opts)
	doc, err := ParseDocument(data, o.file)
	if err != nil {
		return nil, err
	}
	tree := doc.tree
	if ref, ok := tree["extends"].(string); ok {
		if o.baseDir == "" {
			return nil, fmt.Errorf("parse policy: %w: %q needs a base directory (use LoadFile or WithBaseDir)", ErrExtendsUnresolved, ref)
		}
		tree, err = resolveChain(o.ctx, doc, o.baseDir, []string{""})
		if err != nil {
			return nil, err
		}
	}
	return compile(tree, o)
}

// LoadFile reads, validates, resolves (extends) and compiles the policy at
// path. `extends` names a file relative to the directory of the file that
// contains it; when that name has no extension and does not exist, ".yaml"
// and then ".yml" are tried.
func LoadFile(path string, opts ...Option) (*Policy, error) {
	o := collect(opts)
	doc, err := loadDocument(o.ctx, path)
	if err != nil {
		return nil, err
	}
	return compile(doc.tree, o)
}

// LoadDocument reads and resolves the policy at path into its merged
// document without compiling it (used to compare merge results).
func LoadDocument(path string) (*Document, error) {
	return loadDocument(context.Background(), path)
}

func loadDocument(ctx context.Context, path string) (*Document, error) {
	doc, err := readDocument(ctx, path)
	if err != nil {
		return nil, err
	}
	real, err := canonicalPath(path)
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	tree, err := resolveChain(ctx, doc, filepath.Dir(path), []string{real})
	if err != nil {
		return nil, err
	}
	return &Document{file: path, tree: tree}, nil
}

// readDocument reads a regular file only (a FIFO would block the open
// forever, /dev/zero never ends: regfile) and at most MaxDocumentBytes+1
// bytes of it, so that an enormous file is refused without reading it all.
func readDocument(ctx context.Context, path string) (*Document, error) {
	data, err := regfile.ReadFile(ctx, path, MaxDocumentBytes)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return ParseDocument(data, path)
}

func canonicalPath(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", err
	}
	return real, nil
}

var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// resolveChain follows doc's extends chain (whose files so far are in seen,
// as canonical paths) and returns the merged tree.
func resolveChain(ctx context.Context, doc *Document, dir string, seen []string) (map[string]any, error) {
	ref, ok := doc.tree["extends"].(string)
	if !ok {
		return withoutExtends(doc.tree), nil
	}
	if len(seen) > maxExtendsDepth {
		return nil, fmt.Errorf("resolve extends %q in %s: %w: chain longer than %d documents", ref, doc.file, ErrLimit, maxExtendsDepth)
	}
	if schemeRE.MatchString(ref) {
		// Built-in names ("hushspec:default") and URLs are resolution
		// strategies this engine does not offer (core 2.3 leaves them to
		// engines); refusing is the fail-closed choice.
		return nil, fmt.Errorf("resolve extends %q in %s: %w: only file paths are supported", ref, doc.file, ErrExtendsUnresolved)
	}
	path := ref
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && filepath.Ext(path) == "" {
		for _, ext := range []string{".yaml", ".yml"} {
			if _, err := os.Stat(path + ext); err == nil {
				path += ext
				break
			}
		}
	}
	real, err := canonicalPath(path)
	if err != nil {
		return nil, fmt.Errorf("resolve extends %q in %s: %w: %v", ref, doc.file, ErrExtendsUnresolved, err)
	}
	for _, s := range seen {
		if s == real {
			return nil, fmt.Errorf("resolve extends %q in %s: %w: %s is already in the chain", ref, doc.file, ErrExtendsCycle, real)
		}
	}
	base, err := readDocument(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("resolve extends %q in %s: %w", ref, doc.file, err)
	}
	baseTree, err := resolveChain(ctx, base, filepath.Dir(path), append(seen[:len(seen):len(seen)], real))
	if err != nil {
		return nil, err
	}
	return mergeTrees(baseTree, doc.tree), nil
}

func withoutExtends(t map[string]any) map[string]any {
	out := make(map[string]any, len(t))
	for k, v := range t {
		if k != "extends" {
			out[k] = v
		}
	}
	return out
}

// mergeTrees overlays child on an already resolved base (core 4.1). In
// HushSpec 0.1.0 `merge` and `deep_merge` agree on rules: a rule block the
// child defines replaces the base's whole block; they differ on extensions,
// where deep_merge merges mappings recursively and merge replaces each
// extension block. `replace` keeps the child alone.
func mergeTrees(base, child map[string]any) map[string]any {
	strategy, _ := child["merge_strategy"].(string)
	if strategy == "replace" {
		return withoutExtends(child)
	}
	out := make(map[string]any, len(base)+len(child))
	for k, v := range base {
		out[k] = v
	}
	// The strategy a base declared described how it merged onto its own
	// base; it says nothing about the result.
	delete(out, "merge_strategy")
	for k, v := range child {
		switch k {
		case "extends":
		case "rules":
			out[k] = overlay(base[k], v, false)
		case "extensions":
			out[k] = overlay(base[k], v, strategy != "merge")
		default:
			out[k] = v
		}
	}
	return out
}

// overlay merges child mapping c onto base mapping b one key deep, or
// recursively when deep is set. Arrays and scalars are replaced, never
// appended (core 4.1).
func overlay(b, c any, deep bool) any {
	bm, ok1 := b.(map[string]any)
	cm, ok2 := c.(map[string]any)
	if !ok1 || !ok2 {
		return c
	}
	out := make(map[string]any, len(bm)+len(cm))
	for k, v := range bm {
		out[k] = v
	}
	for k, v := range cm {
		if deep {
			out[k] = overlayDeep(bm[k], v)
		} else {
			out[k] = v
		}
	}
	return out
}

func overlayDeep(b, c any) any {
	bm, ok1 := b.(map[string]any)
	cm, ok2 := c.(map[string]any)
	if !ok1 || !ok2 {
		return c
	}
	return overlay(bm, cm, true)
}

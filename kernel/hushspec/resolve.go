package hushspec

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

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
	if ref, ok := doc.tree["extends"].(string); ok && o.baseDir == "" {
		return nil, fmt.Errorf("parse policy: %w: %q needs a base directory (use LoadFile or WithBaseDir)", ErrExtendsUnresolved, ref)
	}
	tree, err := resolveChain(o.ctx, doc, o.baseDir, []string{""})
	if err != nil {
		return nil, err
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

var (
	schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)
	pinRE    = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
)

// splitPin separates an extends reference from its digest pin (core 2.3):
// every fragment is a pin, and one that is not exactly sha256: and 64
// lowercase hex digits is refused rather than read as part of the path.
func splitPin(ref string) (loc, pin string, err error) {
	i := strings.LastIndexByte(ref, '#')
	if i < 0 {
		return ref, "", nil
	}
	if !pinRE.MatchString(ref[i+1:]) {
		return "", "", fmt.Errorf("%w: fragment %q is not sha256: followed by 64 lowercase hex digits", ErrInvalidPin, clip(ref[i+1:]))
	}
	return ref[:i], ref[i+len("#sha256:"):], nil
}

// resolveChain follows doc's extends chain (whose files so far are in seen,
// as canonical paths; "" stands for a document that came from memory) and
// returns the merged tree (core 2.6.2, 4.2). This engine's loader is the
// filesystem one only: a reference is a path, relative to the directory of
// the document that names it; built-in names and URLs are refused, since an
// engine that cannot load a reference must refuse the document rather than
// evaluate the child alone.
func resolveChain(ctx context.Context, doc *Document, dir string, seen []string) (map[string]any, error) {
	ref, ok := doc.tree["extends"].(string)
	if !ok {
		return resolved(doc.tree), nil
	}
	fail := func(err error) error { return fmt.Errorf("resolve extends %q in %s: %w", ref, doc.file, err) }
	if len(seen) > maxExtendsDepth {
		return nil, fail(fmt.Errorf("%w: %w: chain of more than %d extends hops", ErrExtendsUnresolved, ErrLimit, maxExtendsDepth))
	}
	loc, pin, err := splitPin(ref)
	if err != nil {
		return nil, fail(err)
	}
	if schemeRE.MatchString(loc) && !filepath.IsAbs(loc) {
		// builtin:, https:// (no HTTPS loader is compiled in), http://
		// (always refused) and any other scheme.
		return nil, fail(fmt.Errorf("%w: only file paths are supported (no built-in rulesets, no remote loader)", ErrExtendsUnresolved))
	}
	path := loc
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
		return nil, fail(fmt.Errorf("%w: %v", ErrExtendsUnresolved, err))
	}
	// A cycle is reported before any pin is compared (core 2.6.2 item 1).
	for _, s := range seen {
		if s == real {
			return nil, fail(fmt.Errorf("%w: %s is already in the chain", ErrExtendsCycle, real))
		}
	}
	base, err := readDocument(ctx, path)
	if err != nil {
		return nil, fail(err)
	}
	if pin != "" {
		got, err := ownContentHash(base.tree)
		if err != nil {
			return nil, fail(err)
		}
		if got != pin {
			return nil, fail(fmt.Errorf("%w: %s has content hash sha256:%s, the reference pins sha256:%s", ErrDigestMismatch, path, got, pin))
		}
	}
	baseTree, err := resolveChain(ctx, base, filepath.Dir(path), append(seen[:len(seen):len(seen)], real))
	if err != nil {
		return nil, err
	}
	return mergeTrees(baseTree, doc.tree), nil
}

// resolved drops what only says how a document is assembled: a resolved
// document has neither extends nor merge_strategy (core 2.3).
func resolved(t map[string]any) map[string]any {
	out := make(map[string]any, len(t))
	for k, v := range t {
		if k != "extends" && k != "merge_strategy" {
			out[k] = v
		}
	}
	return out
}

// mergeTrees overlays child on an already resolved base (core 4.1). Under
// deep_merge (the default) and merge alike, a rule block the child defines
// replaces the base's whole block, and blocks the child leaves out are kept.
// They differ on extensions: merge replaces each extension block the child
// has, deep_merge merges mappings recursively (the companion specifications'
// field-level rules are not implemented; see docs/policy.md). Under every
// strategy the child's metadata replaces the base's whole. replace keeps
// the child alone.
func mergeTrees(base, child map[string]any) map[string]any {
	strategy, _ := child["merge_strategy"].(string)
	if strategy == "replace" {
		return resolved(child)
	}
	out := make(map[string]any, len(base)+len(child))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range child {
		switch k {
		case "extends", "merge_strategy":
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

package policysource

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/backbay-labs/chio-agent/internal/blobstore"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// DefaultTimeout bounds one load or one version check when the caller's
// context has no earlier deadline: the SDKs retry a store they cannot reach
// until their context ends.
const DefaultTimeout = 30 * time.Second

// DefaultWatchInterval is how often Watch asks the store for the objects'
// versions when the caller gives no interval.
const DefaultWatchInterval = 30 * time.Second

// maxChain bounds the objects one extends chain may fetch (hushspec bounds
// the chain it merges as well).
const maxChain = 16

// Source is one policy in an object store: it loads the policy, remembers
// the version of each object the load read, and tells when one changed.
// Its methods are safe for concurrent use.
type Source struct {
	loc *Location
	// Timeout bounds each load and version check (DefaultTimeout when 0).
	Timeout time.Duration

	mu       sync.Mutex
	st       blobstore.Store
	versions map[string]string // object key -> version, of the last load that read them
}

// New parses source (Parse) without reaching the store.
func New(source string) (*Source, error) {
	l, err := Parse(source)
	if err != nil {
		return nil, err
	}
	return &Source{loc: l}, nil
}

// Location is the object the source names.
func (s *Source) Location() *Location { return s.loc }

// Load loads the policy in a single call: New, Load, Close.
func Load(ctx context.Context, source string, opts ...hushspec.Option) (*hushspec.Policy, error) {
	s, err := New(source)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Load(ctx, opts...)
}

// Close releases the store's client.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st == nil {
		return nil
	}
	err := s.st.Close()
	s.st = nil
	return err
}

func (s *Source) client(ctx context.Context) (blobstore.Store, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st == nil {
		st, err := blobstore.Open(ctx, s.loc.Scheme, s.loc.Bucket, s.loc.Container)
		if err != nil {
			return nil, err
		}
		s.st = st
	}
	return s.st, nil
}

func (s *Source) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	t := s.Timeout
	if t <= 0 {
		t = DefaultTimeout
	}
	return context.WithTimeout(ctx, t)
}

// Load reads the object and the objects its `extends` chain names (in the
// same store), checks the pin, and compiles the policy with opts (a panic
// sentinel, say). Every error names the object and the cause. Once the
// objects were read, their versions are remembered even when the policy
// does not compile (or names a base that is missing, or refused), so that
// Changed reports the next change rather than the same broken content
// again; a read that fails otherwise (the store unreachable) remembers
// nothing, and the next Changed tries again.
func (s *Source) Load(ctx context.Context, opts ...hushspec.Option) (*hushspec.Policy, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	url := s.loc.String()
	st, err := s.client(ctx)
	if err != nil {
		return nil, fmt.Errorf("load policy %s: %w", url, err)
	}
	objs, versions, err := fetchChain(ctx, st, s.loc)
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, hushspec.ErrExtendsUnresolved) || errors.Is(err, hushspec.ErrLimit) {
		// The store answered: what it holds is refused until it changes.
		s.mu.Lock()
		s.versions = versions
		s.mu.Unlock()
	}
	if err != nil {
		return nil, fmt.Errorf("load policy %s: %w", url, err)
	}

	root := objs[0]
	if s.loc.Pin != nil {
		if err := CheckPin(root.data, s.loc.Pin); err != nil {
			return nil, fmt.Errorf("load policy %s: %w", url, err)
		}
		if len(objs) > 1 {
			return nil, fmt.Errorf("load policy %s: a pinned policy may not extend another object (%s would be unpinned); inline the base", url, s.loc.URL(objs[1].key))
		}
	}
	opts = append(opts, hushspec.WithContext(ctx), hushspec.WithFilename(url))
	if len(objs) == 1 {
		p, err := hushspec.Parse(root.data, opts...)
		if err != nil {
			return nil, fmt.Errorf("load policy %s: %w", url, err)
		}
		return p, nil
	}
	return s.compileChain(objs, opts)
}

// compileChain lays the chain's objects out in a private directory under
// their keys and lets hushspec resolve `extends` there, exactly as it does
// for files: fetchChain has already refused every reference that would
// leave the store.
func (s *Source) compileChain(objs []object, opts []hushspec.Option) (*hushspec.Policy, error) {
	url := s.loc.String()
	dir, err := os.MkdirTemp("", "chio-policy-")
	if err != nil {
		return nil, fmt.Errorf("load policy %s: %w", url, err)
	}
	defer os.RemoveAll(dir)
	for _, o := range objs {
		p := filepath.Join(dir, filepath.FromSlash(o.key))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return nil, fmt.Errorf("load policy %s: %w", url, err)
		}
		if err := os.WriteFile(p, o.data, 0o600); err != nil {
			return nil, fmt.Errorf("load policy %s: %w", url, err)
		}
	}
	base := filepath.Join(dir, filepath.FromSlash(path.Dir(s.loc.Key)))
	p, err := hushspec.Parse(objs[0].data, append(opts, hushspec.WithBaseDir(base))...)
	if err != nil {
		return nil, &renamed{err: fmt.Errorf("load policy %s: %w", url, err), from: dir + string(filepath.Separator), to: s.loc.Base()}
	}
	return p, nil
}

// renamed is err with the private directory's paths in its message written
// as the store's URLs.
type renamed struct {
	err      error
	from, to string
}

func (r *renamed) Error() string { return strings.ReplaceAll(r.err.Error(), r.from, r.to) }
func (r *renamed) Unwrap() error { return r.err }

type object struct {
	key     string
	data    []byte
	version string
}

// fetchChain reads l's object, then the object its `extends` names,
// relative to it, and so on: at most maxChain objects, each at most
// hushspec.MaxDocumentBytes. A reference that is absolute, leaves the
// bucket's root or names a scheme is refused (a store policy extends
// objects of its own store, and never a file of the machine reading it).
// As for files, a name without an extension that does not exist is tried
// with ".yaml", then ".yml".
//
// versions holds the version of every object read, and "" for one the
// store does not hold, so that its appearance is a change.
func fetchChain(ctx context.Context, st blobstore.Store, l *Location) (objs []object, versions map[string]string, err error) {
	versions = map[string]string{}
	key := l.Key
	for {
		data, version, err := st.Get(ctx, key, hushspec.MaxDocumentBytes)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				versions[key] = ""
			}
			if len(objs) == 0 {
				return nil, versions, fmt.Errorf("read %s: %w", l.URL(key), err)
			}
			return nil, versions, fmt.Errorf("read %s (extended by %s): %w", l.URL(key), l.URL(objs[len(objs)-1].key), err)
		}
		objs = append(objs, object{key: key, data: data, version: version})
		versions[key] = version
		ref, err := extendsRef(data)
		if err != nil || ref == "" {
			// A document that does not parse is hushspec's to report.
			return objs, versions, nil
		}
		from := l.URL(key)
		if strings.Contains(ref, ":") || strings.HasPrefix(ref, "/") || strings.Contains(ref, `\`) {
			return nil, versions, fmt.Errorf("resolve extends %q in %s: %w: a policy in a store extends an object beside it by a relative name, within the same store", ref, from, hushspec.ErrExtendsUnresolved)
		}
		next := path.Clean(path.Join(path.Dir(key), ref))
		if !filepath.IsLocal(next) {
			return nil, versions, fmt.Errorf("resolve extends %q in %s: %w: it leaves the root of %s", ref, from, hushspec.ErrExtendsUnresolved, l.Base())
		}
		if len(objs) >= maxChain {
			return nil, versions, fmt.Errorf("resolve extends %q in %s: %w: chain longer than %d objects", ref, from, hushspec.ErrLimit, maxChain)
		}
		if path.Ext(next) == "" {
			if found, err := firstExisting(ctx, st, next); err != nil {
				return nil, nil, fmt.Errorf("resolve extends %q in %s: %w", ref, from, err)
			} else if found != "" {
				next = found
			}
		}
		if _, seen := versions[next]; seen {
			// hushspec reports the cycle with the chain it merges.
			return objs, versions, nil
		}
		key = next
	}
}

// firstExisting is the first of key, key.yaml and key.yml the store holds,
// or "" when it holds none.
func firstExisting(ctx context.Context, st blobstore.Store, key string) (string, error) {
	for _, k := range []string{key, key + ".yaml", key + ".yml"} {
		if _, err := st.Version(ctx, k); err == nil {
			return k, nil
		} else if !errors.Is(err, ErrNotFound) {
			return "", err
		}
	}
	return "", nil
}

// extendsRef is the top-level `extends` of a YAML document, "" when it has
// none.
func extendsRef(data []byte) (string, error) {
	var doc struct {
		Extends any `yaml:"extends"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return "", err
	}
	ref, _ := doc.Extends.(string)
	return ref, nil
}

// Changed asks the store for the version of every object the last load
// read, and says whether one differs (is gone, or, missing then, is there
// now). Before any load that
// read the objects, it says true: there is something to load. An error
// (the store unreachable) says nothing about a change.
func (s *Source) Changed(ctx context.Context) (bool, error) {
	s.mu.Lock()
	versions := maps.Clone(s.versions)
	s.mu.Unlock()
	if versions == nil {
		return true, nil
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	st, err := s.client(ctx)
	if err != nil {
		return false, err
	}
	for key, was := range versions {
		v, err := st.Version(ctx, key)
		if errors.Is(err, ErrNotFound) {
			v, err = "", nil // gone, or still missing
		}
		if err != nil {
			return false, fmt.Errorf("check %s: %w", s.loc.URL(key), err)
		}
		if v != was {
			return true, nil
		}
	}
	return false, nil
}

// Watch calls Changed every interval (DefaultWatchInterval when 0) until
// ctx ends, and changed when it reports a change; the caller reloads (Load
// remembers the new versions). An error is given to failed, once per
// outage, when failed is not nil.
func (s *Source) Watch(ctx context.Context, interval time.Duration, changed func(), failed func(error)) {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	down := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, err := s.Changed(ctx)
		if err != nil {
			if !down && failed != nil && ctx.Err() == nil {
				failed(err)
			}
			down = true
			continue
		}
		down = false
		if c {
			changed()
		}
	}
}

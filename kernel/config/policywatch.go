package config

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/backbay-labs/chio-agent/internal/policysource"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// PolicyWatch is the policy source of a running agent or sidecar: it loads
// the policy, at start and on every reload, and for an object store source
// (s3://, gs://, azblob://) polls the objects' versions so that a change is
// reloaded under the same rules as a changed file: a policy that does not
// load is refused and the one in force stays (the caller's rule). A path is
// watched by the node agent's own file stat; an http(s):// policy only on
// a reload request.
type PolicyWatch struct {
	source, panicFile string
	interval          time.Duration
	store             *policysource.Source // nil unless an object store
}

// OpenPolicy makes the PolicyWatch of the resolved source; nothing is read
// yet.
func (c *Common) OpenPolicy() (*PolicyWatch, error) {
	w := &PolicyWatch{source: c.PolicySource, panicFile: c.PanicFile, interval: c.PolicyWatchInterval}
	if policysource.IsStore(c.PolicySource) {
		s, err := policysource.New(c.PolicySource)
		if err != nil {
			return nil, err
		}
		w.store = s
	}
	return w, nil
}

// Load loads the policy (LoadPolicy's rules), remembering an object store's
// versions for Watch.
func (w *PolicyWatch) Load(ctx context.Context) (*hushspec.Policy, error) {
	if w.store == nil {
		return LoadPolicy(ctx, w.source, w.panicFile)
	}
	opts := []hushspec.Option{}
	if w.panicFile != "" {
		opts = append(opts, hushspec.WithPanicSentinel(w.panicFile))
	}
	return w.store.Load(ctx, opts...)
}

// Polled says whether Watch polls the source (an object store).
func (w *PolicyWatch) Polled() bool { return w.store != nil }

// Interval is the polling interval in force.
func (w *PolicyWatch) Interval() time.Duration {
	if w.interval > 0 {
		return w.interval
	}
	return policysource.DefaultWatchInterval
}

// Watch polls an object store source until ctx ends, calling changed when
// an object of the last load changed, and failed once per outage of the
// store. It returns at once for other sources.
func (w *PolicyWatch) Watch(ctx context.Context, changed func(), failed func(error)) {
	if w.store == nil {
		return
	}
	w.store.Watch(ctx, w.Interval(), changed, failed)
}

// Close releases an object store's client.
func (w *PolicyWatch) Close() error {
	if w.store == nil {
		return nil
	}
	return w.store.Close()
}

// PolicySources loads the many sources of kubernetes.policies (its Load is
// a PolicyLoader) and polls each object store source among them, from its
// first load until ctx ends, every interval, as PolicyWatch does for one:
// Changed says, once per change, that one changed, without blocking.
type PolicySources struct {
	ctx       context.Context
	panicFile string
	interval  time.Duration

	mu     sync.Mutex
	stores map[string]*polledSource // by source
}

type polledSource struct {
	src   *policysource.Source
	dirty atomic.Bool
}

// NewPolicySources makes the loader of many sources; polling stops when ctx
// ends. interval 0 is policysource.DefaultWatchInterval.
func NewPolicySources(ctx context.Context, panicFile string, interval time.Duration) *PolicySources {
	return &PolicySources{ctx: ctx, panicFile: panicFile, interval: interval, stores: map[string]*polledSource{}}
}

// Load loads source (LoadPolicy's rules); an object store source is polled
// from its first load on.
func (p *PolicySources) Load(ctx context.Context, source string) (*hushspec.Policy, error) {
	if !policysource.IsStore(source) {
		return LoadPolicy(ctx, source, p.panicFile)
	}
	p.mu.Lock()
	ps := p.stores[source]
	if ps == nil {
		src, err := policysource.New(source)
		if err != nil {
			p.mu.Unlock()
			return nil, err
		}
		ps = &polledSource{src: src}
		p.stores[source] = ps
		interval := p.interval
		if interval <= 0 {
			interval = policysource.DefaultWatchInterval
		}
		go func() {
			src.Watch(p.ctx, interval, func() { ps.dirty.Store(true) }, nil)
			src.Close()
		}()
	}
	p.mu.Unlock()
	var opts []hushspec.Option
	if p.panicFile != "" {
		opts = append(opts, hushspec.WithPanicSentinel(p.panicFile))
	}
	// A change seen while this load reads is the next reload's.
	ps.dirty.Store(false)
	return ps.src.Load(ctx, opts...)
}

// Changed says whether the object store source changed since its last
// load, and forgets it (the caller reloads). False for other sources.
func (p *PolicySources) Changed(source string) bool {
	p.mu.Lock()
	ps := p.stores[source]
	p.mu.Unlock()
	return ps != nil && ps.dirty.Swap(false)
}

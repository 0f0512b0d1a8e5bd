package config

import (
	"context"
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

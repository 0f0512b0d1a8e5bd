package cri

import (
	"context"
	"errors"
	"io"
	"maps"
	"time"

	"github.com/sirupsen/logrus"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/backbay-labs/chio-agent/internal/nolog"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

// ChangeKind says what happened to a pod between two listings.
type ChangeKind int

// The kinds of change.
const (
	// PodAdded: a sandbox not seen before (every pod, on the first sync).
	PodAdded ChangeKind = iota + 1
	// PodUpdated: its readiness, containers, cgroups, labels or errors
	// changed.
	PodUpdated
	// PodRemoved: the sandbox is gone from the runtime.
	PodRemoved
)

func (k ChangeKind) String() string {
	switch k {
	case PodAdded:
		return "added"
	case PodUpdated:
		return "updated"
	case PodRemoved:
		return "removed"
	}
	return "unknown"
}

// Change is one pod's change; for PodRemoved, Pod is its last known state.
type Change struct {
	Kind ChangeKind
	Pod  Pod
}

// Watcher follows the pods of a runtime.
type Watcher struct {
	// Client is the runtime to follow. Required.
	Client *Client
	// Interval is the time between two listings. Default
	// config.DefaultPollInterval.
	Interval time.Duration
	// Log receives listing and event-stream errors. Default: discarded.
	Log logrus.FieldLogger
	// Kick, when not nil, asks for a listing now (NotifyCgroups sends on
	// it). A pod is often not listed yet when its cgroup appears, so a kick
	// that finds no change lists again after 10 ms, 20 ms, 40 ms ... up to
	// kickRetries times, until a listing finds one.
	Kick <-chan struct{}
}

// kickRetries bounds the listings one kick starts: 10 ms doubling to about
// 1.3 s in all, beyond which the poll finds the pod.
const kickRetries = 8

// Run lists the pods, calls fn with every pod as PodAdded (also when there is
// none, so that the caller knows the first sync is done), then calls fn with
// the changes of each later listing that has any, until ctx ends. A listing
// happens every Interval and at once after any container event the runtime
// sends. A failed listing changes nothing (a runtime that does not answer
// makes no pod disappear). fn runs on Run's goroutine; Run returns nil when
// ctx ends.
func (w *Watcher) Run(ctx context.Context, fn func([]Change)) error {
	interval := w.Interval
	if interval <= 0 {
		interval = config.DefaultPollInterval
	}
	log := nolog.Or(w.Log)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	kick := make(chan struct{}, 1)
	go w.events(ctx, interval, log, kick)

	var known map[string]Pod
	t := time.NewTicker(interval)
	defer t.Stop()
	burst := time.NewTimer(time.Hour)
	burst.Stop()
	defer burst.Stop()
	retries, wait := 0, time.Duration(0) // the kick's listings left, the next one's delay
	for {
		pods, err := w.Client.List(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil
		case err != nil:
			log.WithError(err).Warn("list pods through the CRI")
		default:
			now := make(map[string]Pod, len(pods))
			for _, p := range pods {
				now[p.SandboxID] = p
			}
			changes := diff(known, now)
			if len(changes) > 0 || known == nil {
				fn(changes)
			}
			known = now
			if len(changes) > 0 {
				retries = 0
			}
		}
		if retries > 0 {
			retries--
			burst.Reset(wait)
			wait *= 2
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-kick:
		case <-burst.C:
		case <-w.Kick:
			retries, wait = kickRetries, 10*time.Millisecond
		}
	}
}

// events asks for the runtime's container events and kicks a listing on each;
// a runtime without them (Unimplemented) leaves the poll alone.
func (w *Watcher) events(ctx context.Context, retry time.Duration, log logrus.FieldLogger, kick chan<- struct{}) {
	for ctx.Err() == nil {
		stream, err := w.Client.rt.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
		for err == nil {
			if _, err = stream.Recv(); err == nil {
				select {
				case kick <- struct{}{}:
				default:
				}
			}
		}
		switch {
		case ctx.Err() != nil:
			return
		case errUnimplemented(err):
			log.Debug("the runtime sends no container events; polling only")
			return
		case !errors.Is(err, io.EOF):
			log.WithError(err).Debug("container event stream ended")
		}
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
}

// diff returns the changes from before to now, by sandbox id. A nil before is
// the first sync.
func diff(before, now map[string]Pod) []Change {
	var out []Change
	for id, p := range now {
		old, ok := before[id]
		switch {
		case !ok:
			out = append(out, Change{Kind: PodAdded, Pod: p})
		case !samePod(old, p):
			out = append(out, Change{Kind: PodUpdated, Pod: p})
		}
	}
	for id, p := range before {
		if _, ok := now[id]; !ok {
			out = append(out, Change{Kind: PodRemoved, Pod: p})
		}
	}
	return out
}

// samePod compares what a caller acts on.
func samePod(a, b Pod) bool {
	if a.Ready != b.Ready || a.Netns != b.Netns || a.Cgroup != b.Cgroup || (a.Err == nil) != (b.Err == nil) ||
		!maps.Equal(a.Labels, b.Labels) || len(a.Containers) != len(b.Containers) {
		return false
	}
	for i := range a.Containers {
		x, y := a.Containers[i], b.Containers[i]
		if x.ID != y.ID || x.State != y.State || x.Cgroup != y.Cgroup || x.PID != y.PID || (x.Err == nil) != (y.Err == nil) {
			return false
		}
	}
	return true
}

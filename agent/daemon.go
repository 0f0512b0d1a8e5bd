package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/sirupsen/logrus"
)

// DaemonOptions configure RunDaemon.
type DaemonOptions struct {
	// Agent configures the datapath and proxy. PinDir should be set (the
	// default bpf.DefaultPinDir is applied when empty) so that protection
	// outlives the daemon.
	Agent Options
	// Workloads to protect.
	Workloads []WorkloadSpec
	// StatusSocket is served for `chio-agent status`. Default
	// DefaultStatusSocket.
	StatusSocket string
	// ReloadPolicy loads the policy again; called on a Reload signal and
	// when the watched file changes. A failure keeps the old policy.
	ReloadPolicy func(ctx context.Context) (*hushspec.Policy, error)
	// ReloadWorkloads loads the workload list again; called on a Reload
	// signal. A failure keeps the workloads as they are; nil: the list is
	// fixed.
	ReloadWorkloads func(ctx context.Context) ([]WorkloadSpec, error)
	// WatchFile is the policy file to watch for changes ("" watches none).
	WatchFile string
	// WatchInterval is how often WatchFile is checked. Default 1s.
	WatchInterval time.Duration
	// PolicyChanged, when set, delivers a change of a policy source the
	// daemon cannot stat (an object store's, polled by its watcher): each
	// reloads the policy as a changed WatchFile does.
	PolicyChanged <-chan struct{}
	// Reload delivers reload requests (SIGHUP).
	Reload <-chan os.Signal
	// MetricsAddr, when set, serves Prometheus metrics (GET /metrics) on
	// this TCP address. They are always on the status socket too. Danger: an
	// address beyond loopback exposes workload names to whoever reaches it.
	MetricsAddr string
	// ReadyFile, when set, is written once every workload whose cgroup
	// exists is protected (the others guarded or watched) and the status
	// socket is up, and removed on exit.
	ReadyFile string
	// Version is reported by status.
	Version string
	// Kubernetes, when set, protects the node's pods found through the CRI
	// (kube.go) beside Workloads. The first listing is applied before stale
	// pinned workloads are dropped and before readiness.
	Kubernetes *KubeOptions

	// started, when set, is given the agent once it runs: the package's
	// tests count what it holds.
	started func(*Agent)
}

// RunDaemon runs the node agent until ctx ends: it adopts pinned state,
// protects the configured workloads, serves status, and reloads the policy
// on request or file change. On return the pinned programs stay attached, so
// protected workloads fail closed until an agent runs again.
func RunDaemon(ctx context.Context, o DaemonOptions) error {
	if o.Agent.PinDir == "" {
		o.Agent.PinDir = "/sys/fs/bpf/chio"
	}
	if o.StatusSocket == "" {
		o.StatusSocket = DefaultStatusSocket
	}
	if o.WatchInterval <= 0 {
		o.WatchInterval = time.Second
	}
	a, err := Start(o.Agent)
	if err != nil {
		return err
	}
	defer a.Close()
	if o.started != nil {
		o.started(a)
	}
	log := a.opts.Logger // Start filled in a default
	if a.objs.HandoverPending() {
		log.WithFields(logrus.Fields{"pin_dir": o.Agent.PinDir, "previous_layouts": a.objs.PreviousLayouts()}).
			Info("the pinned links are another map layout's: they stay as they are (refusing protected connections) until this agent has rebuilt its state and hands them over")
	} else {
		logAttachments(log, a, o.Agent.PinDir)
	}
	defer log.WithField("pin_dir", o.Agent.PinDir).Info("chio-agent stopping: the pinned programs stay attached, so protected workloads cannot connect until an agent runs again")
	// Pod discovery first: it exempts the agent's own cgroup from a pinned
	// birth root before the agent opens a socket of its own.
	var kc *kube
	if o.Kubernetes != nil {
		if kc, err = a.startKube(ctx, *o.Kubernetes); err != nil {
			return err
		}
	}
	// A workload whose cgroup does not exist yet is no error: it is reported
	// (status, log, chio_agent_workload_state) and protected when it appears.
	for _, w := range o.Workloads {
		if err := a.Protect(w); err != nil {
			if kc != nil {
				kc.client.Close()
			}
			return err
		}
	}
	if kc != nil {
		kctx, kcancel := context.WithCancel(ctx)
		kdone := make(chan error, 1)
		go func() { kdone <- kc.run(kctx) }()
		// Stopped before a.Close (deferred earlier, so run later).
		defer func() { kcancel(); <-kdone }()
		// The pods the pinned state protects keep their protection: they
		// are adopted by the first listing before the stale are dropped.
		select {
		case <-kc.synced:
		case err := <-kdone:
			kdone <- err
			if err == nil {
				return nil
			}
			return fmt.Errorf("pod discovery: %w", err)
		case <-ctx.Done():
			return nil
		}
	}
	// Every workload and pod is in this agent's maps: the links of another
	// layout can take its programs.
	if err := a.handOver(); err != nil {
		return err
	}
	if removed, err := a.UnprotectStale(); err != nil {
		return fmt.Errorf("drop stale workloads: %w", err)
	} else if len(removed) > 0 {
		log.WithField("cgroups", removed).Info("stopped protecting workloads no longer configured")
	}

	// `chio-agent reload` (POST /reload) is served by the loop below, one
	// at a time with SIGHUP and the file watch.
	type reloadReq struct{ done chan error }
	reloadReqs := make(chan reloadReq)
	requestReload := func(rctx context.Context) error {
		r := reloadReq{done: make(chan error, 1)}
		select {
		case reloadReqs <- r:
		case <-rctx.Done():
			return rctx.Err()
		}
		select {
		case err := <-r.done:
			return err
		case <-rctx.Done():
			return rctx.Err()
		}
	}
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	statusErr := make(chan error, 1)
	go func() {
		statusErr <- ServeStatus(sctx, o.StatusSocket, func() Status { return a.Status(o.Version) }, o.Agent.Log, a.metricsHandler(), requestReload)
	}()
	if o.MetricsAddr != "" {
		ln, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", a.metricsHandler())
		msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go msrv.Serve(ln)
		defer msrv.Close()
	}
	// ServeStatus fails fast on a socket it cannot take; wait for it to
	// answer before declaring readiness.
	if err := waitStatus(ctx, o.StatusSocket, statusErr); err != nil {
		return err
	}
	if o.ReadyFile != "" {
		if err := os.WriteFile(o.ReadyFile, []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o644); err != nil {
			return fmt.Errorf("write ready file: %w", err)
		}
		defer os.Remove(o.ReadyFile)
	}
	log.WithField("workloads", len(o.Workloads)).Info("chio-agent running")

	var lastStat fileStamp
	if o.WatchFile != "" {
		lastStat, _ = stamp(o.WatchFile)
	}
	tick := time.NewTicker(o.WatchInterval)
	defer tick.Stop()
	reload := func(why string) error {
		if o.ReloadPolicy == nil {
			return nil
		}
		p, err := o.ReloadPolicy(ctx)
		if err != nil {
			err = fmt.Errorf("policy reload (%s) refused, old policy stays: %w", why, err)
			a.proxy.errs.add(err)
			log.WithError(err).Error("policy reload refused; the old policy stays in force")
			return err
		}
		a.SetPolicy(p, a.polSource)
		return nil
	}
	// reloadAll is what SIGHUP and `chio-agent reload` do: the workload
	// list, the policy and the pods' policies again. Each refusal keeps the
	// old in force, is in status and the log, and is returned.
	reloadAll := func(why string) error {
		var errs []error
		if o.ReloadWorkloads != nil {
			if specs, err := o.ReloadWorkloads(ctx); err != nil {
				err = fmt.Errorf("workload reload refused, the workloads stay as they are: %w", err)
				a.proxy.errs.add(err)
				log.WithError(err).Error("workload reload refused; the workloads stay as they are")
				errs = append(errs, err)
			} else if err := a.SetWorkloads(specs); err != nil {
				err = fmt.Errorf("workload reload: %w", err)
				a.proxy.errs.add(err)
				log.WithError(err).Error("workload reload incomplete")
				errs = append(errs, err)
			}
		}
		errs = append(errs, reload(why))
		if kc != nil {
			// Its errors are in status and the log already.
			errs = append(errs, kc.reloadAll(ctx))
		}
		return errors.Join(errs...)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-statusErr:
			if err != nil {
				return err
			}
			return nil
		case <-o.Reload:
			reloadAll("signal")
		case r := <-reloadReqs:
			r.done <- reloadAll("reload command")
		case <-o.PolicyChanged:
			reload("source changed")
		case <-tick.C:
			if kc != nil {
				kc.reloadChanged(ctx) // the pods' policy files (reload.go)
			}
			if o.WatchFile == "" {
				continue
			}
			st, err := stamp(o.WatchFile)
			if err != nil || st == lastStat {
				continue
			}
			lastStat = st
			reload("file changed")
		}
	}
}

// handOver swaps the pinned links of another map layout, left attached by
// Start, to this agent's programs (bpf.Objects.Handover) and removes that
// layout's pins. It must run once the agent's maps hold every workload,
// guard, birth root and exemption it knows: the new programs decide from the
// moment each link is swapped. On failure the links not swapped keep the old
// programs, which refuse protected connections: nothing passes undecided,
// and the next agent resumes the handover.
func (a *Agent) handOver() error {
	if !a.objs.HandoverPending() {
		return nil
	}
	prev := a.objs.PreviousLayouts()
	if err := a.objs.Handover(); err != nil {
		return fmt.Errorf("hand over the pinned links of %v: %w (the links not handed over keep their old programs, "+
			"which refuse protected connections until an agent finishes the handover)", prev, err)
	}
	a.opts.Logger.WithFields(logrus.Fields{"previous_layouts": prev, "links": len(a.objs.Attachments())}).
		Info("handed the pinned links of another map layout over to this agent's programs, and removed that layout's pins")
	return nil
}

// logAttachments says whether the agent adopted the pinned state a previous
// agent left (and how much of it) or attached afresh.
func logAttachments(log logrus.FieldLogger, a *Agent, pinDir string) {
	adopted, fresh := 0, 0
	for _, at := range a.objs.Attachments() {
		if at.Adopted {
			adopted++
		} else {
			fresh++
		}
	}
	f := log.WithFields(logrus.Fields{"pin_dir": pinDir, "adopted_links": adopted, "new_links": fresh})
	if adopted > 0 {
		f.Info("adopted the pinned programs, links and maps a previous agent left")
		return
	}
	f.Info("attached and pinned the programs")
}

func waitStatus(ctx context.Context, path string, errc <-chan error) error {
	for i := 0; i < 500; i++ {
		select {
		case err := <-errc:
			if err == nil {
				err = errors.New("status server stopped")
			}
			return err
		default:
		}
		if _, err := QueryStatus(ctx, path); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("status socket %s never answered", path)
}

// fileStamp identifies a version of a file: an editor that replaces the file
// changes the inode, one that rewrites it changes size or mtime.
type fileStamp struct {
	ino   uint64
	size  int64
	mtime time.Time
}

func stamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{ino: inode(fi), size: fi.Size(), mtime: fi.ModTime()}, nil
}

package sidecar

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/internal/nolog"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/kernel/session"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/ship"
)

// Headers the sidecar reads and writes.
const (
	// HeaderReceiptID names the receipt of the decision on a request. Set
	// on every response to a protected request whose receipt was written,
	// and on the request forwarded upstream, so the API can log it.
	HeaderReceiptID = "X-Chio-Receipt-Id"
	// HeaderCapability carries a chio.capability.v1 token (JSON, or base64
	// of it). It is removed before the request goes upstream.
	HeaderCapability = "X-Chio-Capability"
)

// The sidecar's own endpoints. Every path under /chio/ is the sidecar's and
// is never forwarded; the health path is configurable.
const (
	PathLive        = "/chio/live"
	PathEvaluate    = "/chio/evaluate"
	PathVerify      = "/chio/verify"
	PathAdminStatus = "/chio/admin/status"
	PathAdminReload = "/chio/admin/reload"
	reservedPrefix  = "/chio/"
)

// ReceiptBackend names the receipt log's storage in health reports.
const ReceiptBackend = "bbolt"

// maxHeaderBytes bounds a request head. Go's server answers 431 past it.
const maxHeaderBytes = 64 << 10

// Log field keys.
const (
	logFieldTool    = "tool"
	logFieldMethod  = "method"
	logFieldRoute   = "route"
	logFieldVerdict = "verdict"
	logFieldReceipt = "receipt_id"
	logFieldReason  = "reason"
	logFieldAddr    = "addr"
	logFieldPolicy  = "policy_hash"
)

// Options configures Start and Run.
type Options struct {
	// Settings are the merged flags, environment and kernel.yaml, from
	// config.ResolveSidecar. Required.
	Settings *config.SidecarSettings
	// Version is reported by the health endpoint and the admin status.
	Version string
	// Logger receives one entry per refusal (warn), per allowed request
	// (debug) and the sidecar's lifecycle (info). Default: discard.
	Logger logrus.FieldLogger
	// Now is the clock for decisions and capability time bounds. Default
	// time.Now; tests pass a fixed clock.
	Now func() time.Time
	// Ready, when set, is called once with the listener's address when the
	// sidecar serves (a --ready-file, tests that listen on port 0).
	Ready func(net.Addr)
	// Listener, when set, is served instead of listening on
	// Settings.Listen (tests that must know replicas' addresses first).
	// Start takes it over: Close closes it.
	Listener net.Listener
	// Resolver resolves sessions.peers_dns. Default net.DefaultResolver;
	// tests pass one dialing their own DNS server.
	Resolver *net.Resolver
}

// engine pairs a policy with the kernel deciding on it, so one request
// sees one policy from its route check to its receipt, across reloads.
type engine struct {
	policy   *hushspec.Policy
	k        *kernel.Kernel
	loadedAt time.Time
}

// Server is a running sidecar. Start returns one; Close stops it.
type Server struct {
	opts       Options
	set        *config.SidecarSettings
	spec       *Spec
	upstream   *url.URL
	toolServer string
	key        ed25519.PrivateKey
	rlog       *receipts.Log
	sessions   *session.Journal
	replicas   *replicas     // nil with one replica
	ship       *ship.Shipper // nil for a local sink
	engine     atomic.Pointer[engine]
	proxy      *httputil.ReverseProxy
	srv        *http.Server
	ln         net.Listener
	log        logrus.FieldLogger
	now        func() time.Time
	probe      *writeProbe
	started    time.Time
	serveDone  chan error
	// pol loads the policy at start and on every reload; stopWatch ends
	// its polling of an object store source.
	pol       *config.PolicyWatch
	stopWatch context.CancelFunc
	// stopPeers ends the re-resolution of sessions.peers_dns.
	stopPeers context.CancelFunc
	// drain is the hand-over of this replica's sessions when it stops.
	drain drainState

	// logFailed holds the error once the receipt log refuses all writes
	// until reopened (receipts.ErrFailed): the sidecar stays unready.
	logFailed atomic.Pointer[error]

	allowed, denied, failed atomic.Uint64
}

// Run starts the sidecar, serves until ctx ends, then shuts down: it stops
// accepting, lets requests in flight finish (up to 10s), and closes the
// receipt log, sealing its tail.
func Run(ctx context.Context, opts Options) error {
	s, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	// SIGHUP reloads the policy, as for the node agent; a policy that does
	// not load is logged and the one in force stays.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case err := <-s.serveDone:
			s.serveDone <- err // Close reports it
			break wait
		case <-hup:
			if _, _, err := s.Reload(ctx); err != nil {
				s.log.WithError(err).Error("policy reload on SIGHUP refused; the previous policy stays in force")
			}
		}
	}
	if d := s.set.Sessions.DrainTimeout; d > 0 && s.replicas != nil {
		// Hand the sessions held here to the replicas that remain first
		// (a rolling update, a scale-down): none waits for this one.
		dctx, cancel := context.WithTimeout(context.Background(), d)
		s.Drain(dctx)
		cancel()
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.Close(shutCtx)
}

// Start loads everything the sidecar needs and starts serving. It fails
// closed, naming what is wrong: a policy, spec, key or receipt log that
// cannot be loaded or opened, an upstream that is not a URL, a listener
// that cannot be opened. Nothing is left open on error.
func Start(ctx context.Context, opts Options) (_ *Server, err error) {
	set := opts.Settings
	if set == nil {
		return nil, fmt.Errorf("start sidecar: %w: no settings", ErrStartup)
	}
	s := &Server{opts: opts, set: set, log: opts.Logger, now: opts.Now, started: time.Now(), serveDone: make(chan error, 1)}
	s.log = nolog.Or(s.log)
	if s.now == nil {
		s.now = time.Now
	}
	if s.upstream, err = config.ParseUpstream(set.Upstream); err != nil {
		return nil, fmt.Errorf("start sidecar: upstream: %w", err)
	}
	s.toolServer = set.ToolServer
	if s.toolServer == "" {
		s.toolServer = s.upstream.Scheme + "://" + strings.ToLower(s.upstream.Host)
	}
	if s.spec, err = LoadSpec(set.Spec); err != nil {
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	if err := s.checkEndpoints(); err != nil {
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	if s.pol, err = set.OpenPolicy(); err != nil {
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	defer func() {
		if err != nil {
			s.pol.Close()
		}
	}()
	policy, err := s.pol.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	if s.key, err = set.SigningKey(); err != nil {
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	eng, err := s.newEngine(policy)
	if err != nil {
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	s.engine.Store(eng)
	mode, err := receipts.ParseMode(set.ReceiptMode)
	if err != nil {
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	s.rlog, err = receipts.Open(set.ReceiptPath, receipts.Options{
		Key:             s.key,
		Mode:            mode,
		CheckpointEvery: set.CheckpointEvery,
		CheckpointIdle:  set.CheckpointIdle,
		Logger:          s.log,
	})
	if err != nil {
		return nil, fmt.Errorf("start sidecar: open receipt log: %w", err)
	}
	defer func() {
		if err != nil {
			s.rlog.Close()
		}
	}()
	if set.Sessions.Header == "" {
		set.Sessions.Header = config.DefaultSessionHeader
	}
	if set.Sessions.JournalPath == "" {
		set.Sessions.JournalPath = session.DefaultPath(set.ReceiptPath)
	}
	s.sessions, err = session.Open(set.Sessions.JournalPath, session.Options{
		Limits: set.Sessions.Limits,
		Now:    s.now,
		Logger: s.log,
		// An entry reaches the file after its receipt: a crash may lose
		// an entry whose receipt is durable (a call that never went
		// upstream), never a receipt whose entry is.
		HoldUntilReleased: true,
		// With replicas, a session is decided only where it is held.
		Self: replicaSelf(set),
	})
	if err != nil {
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	defer func() {
		if err != nil {
			s.sessions.Close()
		}
	}()
	// A NATS or store sink ships the log's sealed batches beside it;
	// decisions never wait on it. A refused sink or credential stops the
	// start.
	if o, ok := set.ShipOptions(); ok {
		o.Logger = s.log
		if s.ship, err = ship.New(s.rlog, o); err != nil {
			return nil, fmt.Errorf("start sidecar: %w", err)
		}
		s.ship.Start()
		s.log.WithField("to", s.ship.Subject()).WithField("servers", s.ship.Status().Servers).Info("shipping sealed receipt batches")
	}
	defer func() {
		if err != nil && s.ship != nil {
			s.ship.Stop(0)
		}
	}()
	s.probe = newWriteProbe(set.ReceiptPath)
	s.proxy = s.newProxy()
	if s.replicas, err = s.newReplicas(); err != nil {
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	if s.ln = opts.Listener; s.ln == nil {
		s.ln, err = net.Listen("tcp", set.Listen)
		if err != nil {
			return nil, fmt.Errorf("start sidecar: %w: listen on %s: %w", ErrStartup, set.Listen, err)
		}
	}
	t := set.Timeouts
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          newStdLogger(s.log),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	go func() { s.serveDone <- s.srv.Serve(s.ln) }()
	s.watchPolicy(ctx)
	s.stopPeers = func() {}
	if s.replicas != nil {
		pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		s.stopPeers = cancel
		if s.replicas.dns != nil {
			go s.replicas.dns.run(pctx, set.Sessions.PeersRefresh)
		}
		go s.replicas.probe(pctx, cmp.Or(set.Sessions.PeerProbe, config.DefaultPeerProbe))
	}
	if opts.Ready != nil {
		opts.Ready(s.ln.Addr())
	}
	s.log.WithFields(logrus.Fields{
		logFieldAddr:   s.ln.Addr().String(),
		logFieldPolicy: eng.k.PolicyHash(),
	}).Infof("sidecar protecting %s (%d operations, tool_server %s, receipts %s, %s)",
		s.upstream.Redacted(), len(s.spec.Operations), s.toolServer, set.ReceiptPath, mode)
	return s, nil
}

// Addr is the address the sidecar listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close shuts the server down gracefully within ctx, then closes the
// receipt log (committing and sealing what is queued).
func (s *Server) Close(ctx context.Context) error {
	s.stopWatch()
	s.stopPeers()
	defer s.pol.Close()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	select {
	case serr := <-s.serveDone:
		if serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = fmt.Errorf("serve: %w", serr)
		}
	default:
	}
	if s.ship != nil {
		// Seal the tail and ship it (bounded) before the log closes.
		s.rlog.Flush(ctx, true)
		s.ship.Stop(5 * time.Second)
	}
	if serr := s.sessions.Close(); serr != nil && err == nil {
		err = serr
	}
	if lerr := s.rlog.Close(); lerr != nil && err == nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("stop sidecar: %w", err)
	}
	return nil
}

// replicaSelf is this replica's name in the journal: sessions.self when
// sessions are spread over replicas, else "" (one replica).
func replicaSelf(set *config.SidecarSettings) string {
	if len(set.Sessions.Peers) == 0 && set.Sessions.PeersDNS == "" {
		return ""
	}
	return set.Sessions.Self
}

// Sessions is the open session journal (for in-process readers and tests).
func (s *Server) Sessions() *session.Journal { return s.sessions }

// watchPolicy polls an object store policy source (s3://, gs://, azblob://)
// until Close: a change is reloaded as a reload request is, and a policy
// that does not load is refused and logged, the one in force staying.
func (s *Server) watchPolicy(ctx context.Context) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopWatch = cancel
	if !s.pol.Polled() {
		return
	}
	go s.pol.Watch(wctx, func() {
		if _, _, err := s.Reload(wctx); err != nil && wctx.Err() == nil {
			s.log.WithError(err).Error("policy reload (source changed) refused; the previous policy stays in force")
		}
	}, func(err error) {
		s.log.WithError(err).Warn("policy source unreachable: the policy in force stays; checking again")
	})
}

// ReceiptLog is the open receipt log (for in-process readers and tests).
func (s *Server) ReceiptLog() *receipts.Log { return s.rlog }

// KernelKey is the hex public key that signs this sidecar's receipts.
func (s *Server) KernelKey() string { return kernel.PublicKeyHex(s.key.Public().(ed25519.PublicKey)) }

func (s *Server) newEngine(p *hushspec.Policy) (*engine, error) {
	k, err := kernel.New(kernel.Options{Policy: p, SigningKey: s.key, Clock: s.now, Logger: s.log})
	if err != nil {
		return nil, err
	}
	return &engine{policy: p, k: k, loadedAt: s.now()}, nil
}

// checkEndpoints refuses a spec whose routes the sidecar's own endpoints
// would shadow: a request meant for the API must never be answered by the
// sidecar instead, nor the reverse.
func (s *Server) checkEndpoints() error {
	for _, op := range s.spec.Operations {
		if op.Route == "/chio" || strings.HasPrefix(op.Route, reservedPrefix) {
			return fmt.Errorf("%w: spec route %s %s (%s) is under %s, which the sidecar reserves for its endpoints", ErrStartup, op.Method, op.Route, op.ID, reservedPrefix)
		}
	}
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		if mt, ok, _ := s.spec.Match(m, s.set.HealthPath); ok {
			return fmt.Errorf("%w: health path %s collides with spec route %s %s (%s); set another with %s", ErrStartup, s.set.HealthPath, mt.Op.Method, mt.Op.Route, mt.Op.ID, config.EnvHealthPath)
		}
	}
	return nil
}

// newProxy builds the reverse proxy to the upstream. It never reads
// HTTP(S)_PROXY: the sidecar talks to its upstream directly, and a proxy
// from the environment would see every request.
func (s *Server) newProxy() *httputil.ReverseProxy {
	t := s.set.Timeouts
	dialer := &net.Dialer{Timeout: t.Dial, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   t.Dial,
		ResponseHeaderTimeout: t.UpstreamHeader,
		ExpectContinueTimeout: time.Second,
	}
	up := s.upstream
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(up)
			pr.SetXForwarded()
			pr.Out.Header.Del(HeaderCapability)
			pr.Out.Header.Del(headerDrainHop)
			pr.Out.Header.Set(HeaderReceiptID, receiptIDFrom(pr.In.Context()))
		},
		Transport: transport,
		ModifyResponse: func(resp *http.Response) error {
			// The receipt id is the sidecar's to give: an upstream's own
			// header of that name would read as a second receipt.
			resp.Header.Del(HeaderReceiptID)
			return nil
		},
		ErrorHandler: s.upstreamError,
		ErrorLog:     newStdLogger(s.log),
		// Without a pool every response body is copied through a fresh
		// 32 KiB buffer: the largest source of garbage per request, and
		// the collections it causes were most of the p99 latency added.
		BufferPool: &copyBuffers,
	}
}

// copyBuffers recycles the reverse proxy's body copy buffers.
var copyBuffers bufferPool

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

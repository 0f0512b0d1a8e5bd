package ship

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/sink"
)

// connectTimeout bounds the first connection attempt at New, which tells a
// refused credential (fatal) from an unreachable sink (an outage).
const connectTimeout = 3 * time.Second

// apiTimeout bounds one JetStream API request (stream lookup, creation,
// last message): a request sent while a new stream elects its leader gets
// no answer, and is better asked again than waited on.
const apiTimeout = 2 * time.Second

// stateEvery is how often a shipping run records its progress in the state
// file (and once at its end).
const stateEvery = 250 * time.Millisecond

// Shipper ships one log's sealed batches. New checks the configuration;
// Run ships until its context ends.
type Shipper struct {
	log     *receipts.Log
	o       Options
	logID   string
	subject string
	nc      *nats.Conn
	js      jetstream.JetStream
	// store is the sink when it is a Store (o.Store), nil for NATS (nc,
	// js).
	store sink.Store
	state string

	stopRun func() // set by Start

	mu     sync.Mutex
	st     Status
	stream bool // the stream is known to exist and the mark checked against it
	// markSeq is the stream sequence of the message carrying
	// st.AckedCheckpoint (0: unknown), where a resume scan starts.
	markSeq uint64
}

// Status is the shipper's state, for `chio-agent status` and metrics.
type Status struct {
	// Servers are the sink's URLs (a Store sink: its one URL); Stream
	// and Subject where batches go (NATS only, empty for a Store).
	Servers []string `json:"servers"`
	Stream  string   `json:"stream"`
	Subject string   `json:"subject"`
	// Connected says the client is connected to a server now (a Store:
	// its last request succeeded).
	Connected bool `json:"connected"`
	// AckedCheckpoint is the last checkpoint the stream acknowledged;
	// AckedSeq the last receipt it seals.
	AckedCheckpoint uint64 `json:"acked_checkpoint_seq"`
	AckedSeq        uint64 `json:"acked_seq"`
	// Batches counts batches acknowledged since start (or found already
	// in the stream when resuming).
	Batches uint64 `json:"batches_shipped"`
	// InFlight is the batches published and not yet acknowledged, at most
	// Window (Options.Window).
	InFlight int `json:"in_flight"`
	Window   int `json:"window"`
	// LagReceipts are the receipts in the log not yet acknowledged
	// (sealed or not); LagSeconds the age of the oldest unshipped
	// checkpoint (0 when every checkpoint is shipped).
	LagReceipts uint64  `json:"lag_receipts"`
	LagSeconds  float64 `json:"lag_seconds"`
	// MaxBacklog is the alarm's bound; BacklogExceeded says LagReceipts
	// passed it (decisions go on, everything stays local).
	MaxBacklog      uint64 `json:"max_backlog"`
	BacklogExceeded bool   `json:"backlog_exceeded"`
	// Errors counts failed publishes and connections since start;
	// LastError is the latest, or the backlog alarm while it stands.
	Errors      uint64    `json:"errors"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// New checks opts, loads the credentials and connects. A malformed URL, a
// credential that cannot be read or parsed, or servers that refuse the
// credentials stop it with an error; servers that cannot be reached do not
// (the shipper keeps trying in Run, the backlog staying local).
//
// With Options.Store (or StoreURL) set, the sink is that Store instead of
// NATS; Servers and the NATS options must then be unset.
func New(l *receipts.Log, opts Options) (*Shipper, error) {
	if opts.Window < 0 {
		return nil, fmt.Errorf("check shipping options: window %d: want 1 or more (0 for the default %d)", opts.Window, DefaultWindow)
	}
	o := opts.withDefaults()
	if o.Store != nil || o.StoreURL != "" {
		return newStore(l, o)
	}
	if err := CheckServers(o.Servers); err != nil {
		return nil, err
	}
	if o.Duplicates < o.AckTimeout+maxBackoff {
		return nil, fmt.Errorf("check shipping options: dedup window %v is shorter than the ack timeout %v plus the %v retry backoff: a re-sent batch could be stored twice",
			o.Duplicates, o.AckTimeout, maxBackoff)
	}
	auth, err := authOptions(o.Credentials, o.Lookup)
	if err != nil {
		return nil, err
	}
	s, err := newShipper(l, o, nil, Status{Servers: o.Servers, Stream: o.Stream})
	if err != nil {
		return nil, err
	}
	s.subject = o.SubjectPrefix + "." + s.logID
	s.st.Subject = s.subject
	copts := append([]nats.Option{
		nats.Name("chio-agent receipt shipper " + s.logID),
		nats.Timeout(connectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(-1), // publishes fail fast while disconnected, and are retried from the log
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { s.fail("nats disconnected", err) }),
		nats.ReconnectHandler(func(*nats.Conn) { o.Logger.Info("receipt sink reconnected") }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { s.fail("nats", err) }),
	}, auth...)
	if o.CAFile != "" {
		copts = append(copts, nats.RootCAs(o.CAFile))
	}
	url := strings.Join(o.Servers, ",")
	nc, err := nats.Connect(url, copts...)
	switch {
	case err == nil:
	case IsAuthError(err):
		return nil, fmt.Errorf("connect receipt sink %s: %w", url, Refused(o.Credentials, o.Lookup, time.Now(), err))
	case errors.Is(err, nats.ErrNoServers) || isNetError(err):
		o.Logger.WithError(err).Warn("receipt sink unreachable at start; receipts stay local and ship when it returns")
		nc, err = nats.Connect(url, append(copts, nats.RetryOnFailedConnect(true))...)
		if err != nil {
			return nil, fmt.Errorf("connect receipt sink %s: %w", url, err)
		}
	default:
		return nil, fmt.Errorf("connect receipt sink %s: %w", url, err)
	}
	// The client's own ack timeout and pending bound; the shipper keeps
	// at most Window in flight itself (the bound is slack for publishes a
	// stopped run left outstanding).
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(o.AckTimeout),
		jetstream.WithPublishAsyncMaxPending(4*o.Window))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("connect receipt sink %s: %w", url, err)
	}
	s.nc, s.js = nc, js
	return s, nil
}

// newShipper makes the shipper of l's log to store (nil: NATS, connected
// by the caller): its status starts as st, its mark read from the state
// file.
func newShipper(l *receipts.Log, o Options, store sink.Store, st Status) (*Shipper, error) {
	logID, err := l.LogID()
	if err != nil {
		return nil, err
	}
	s := &Shipper{log: l, o: o, logID: logID, store: store, state: o.StateFile}
	if s.state == "" {
		s.state = l.Path() + ".shipped"
	}
	st.MaxBacklog, st.Window = o.MaxBacklog, o.Window
	s.st = st
	if s.st.AckedCheckpoint, s.markSeq, err = readState(s.state, logID, s.sinkID()); err != nil {
		return nil, err
	}
	return s, nil
}

// sinkID names a Store sink in the state file; "" for NATS.
func (s *Shipper) sinkID() string {
	if s.store == nil {
		return ""
	}
	return s.store.String()
}

func isNetError(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "connection refused") || strings.Contains(msg, "i/o timeout") ||
		strings.Contains(msg, "no route to host") || errors.Is(err, nats.ErrTimeout)
}

// LogID is the id the batches go by.
func (s *Shipper) LogID() string { return s.logID }

// Subject is where this log's batches go: its NATS subject, or a Store's
// URL.
func (s *Shipper) Subject() string {
	if s.store != nil {
		return s.store.String()
	}
	return s.subject
}

// Close closes the connection, or the Store (Run must have returned).
func (s *Shipper) Close() {
	if s.store != nil {
		if err := s.store.Close(); err != nil {
			s.o.Logger.WithError(err).Warn("close receipt sink")
		}
		return
	}
	s.nc.Close()
}

// Status returns the current state, its lag measured now.
func (s *Shipper) Status() Status {
	s.mu.Lock()
	st := s.st
	s.mu.Unlock()
	if s.store == nil {
		st.Connected = s.nc.IsConnected()
	}
	st.Servers = append([]string(nil), st.Servers...)
	s.measureLag(&st)
	return st
}

func (s *Shipper) measureLag(st *Status) {
	last := s.log.LastSeq()
	if last > st.AckedSeq {
		st.LagReceipts = last - st.AckedSeq
	}
	st.LagSeconds = 0
	if cp, err := s.log.Checkpoint(st.AckedCheckpoint + 1); err == nil {
		st.LagSeconds = max(0, time.Since(time.Unix(cp.Body.IssuedAt, 0)).Seconds())
	}
	st.BacklogExceeded = st.LagReceipts > st.MaxBacklog
	if st.BacklogExceeded {
		st.LastError = fmt.Sprintf("receipt backlog of %d receipts exceeds max_backlog %d: decisions go on, every receipt stays in the local log", st.LagReceipts, st.MaxBacklog)
	}
}

func (s *Shipper) fail(what string, err error) {
	if err == nil {
		return
	}
	s.mu.Lock()
	s.st.Errors++
	s.st.LastError, s.st.LastErrorAt = what+": "+err.Error(), time.Now()
	s.mu.Unlock()
}

// Run ships until ctx ends, then returns nil: every sealed checkpoint after
// the last acknowledged one, in order, up to Window publishes in flight; a
// failed publish stops the round, and the next one (after a backoff)
// resumes from the first batch the stream does not hold.
func (s *Shipper) Run(ctx context.Context) error {
	backoff := s.o.Poll
	alarmed := false
	for {
		s.mu.Lock()
		before := s.st.Batches
		s.mu.Unlock()
		err := s.shipOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		s.mu.Lock()
		shipped := s.st.Batches > before
		s.mu.Unlock()
		wait := s.o.Poll
		if shipped {
			// More may have been sealed meanwhile: look again at once.
			wait = 0
		}
		if err != nil {
			s.fail("ship receipts", err)
			s.o.Logger.WithError(err).Warn("receipt shipping failed; the backlog stays in the local log")
			wait = backoff
			backoff = min(backoff*2, maxBackoff)
		} else {
			backoff = s.o.Poll
		}
		if st := s.Status(); st.BacklogExceeded != alarmed {
			alarmed = st.BacklogExceeded
			if alarmed {
				s.o.Logger.Error(st.LastError)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// maxBackoff bounds the wait between failed rounds.
const maxBackoff = 2 * time.Second

// shipOnce ships everything sealed now. After a failed round (and at the
// first) it first checks the mark against the stream (resume).
func (s *Shipper) shipOnce(ctx context.Context) error {
	last, _, err := s.log.SealedCheckpoints()
	if err != nil {
		return err
	}
	s.mu.Lock()
	acked, known := s.st.AckedCheckpoint, s.stream
	s.mu.Unlock()
	if last <= acked && known {
		return nil
	}
	if s.store == nil && !s.nc.IsConnected() {
		return errors.New("not connected to any server")
	}
	var held map[uint64]uint64
	if !known {
		if s.store != nil {
			held, err = s.resumeStore(ctx)
		} else if err = s.ensureStream(ctx); err == nil {
			held, err = s.resume(ctx)
		}
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.stream = true
		acked = s.st.AckedCheckpoint
		s.mu.Unlock()
	}
	if last <= acked {
		return nil
	}
	err = s.pipeline(ctx, acked, held)
	s.mu.Lock()
	cp, seq := s.st.AckedCheckpoint, s.markSeq
	s.mu.Unlock()
	if werr := writeState(s.state, s.logID, s.sinkID(), cp, seq); err == nil {
		err = werr
	}
	if err != nil {
		// Check the mark against the stream again before the next round:
		// publishes after the failed one may have landed.
		s.mu.Lock()
		s.stream = false
		s.mu.Unlock()
	}
	return err
}

// flight is one batch published (or found in the stream) and not yet
// settled.
type flight struct {
	cpSeq, endSeq uint64
	paf           jetstream.PubAckFuture // NATS; nil: the stream held it already
	put           chan error             // a Store's Put's result; nil: held already
	streamSeq     uint64                 // the stream's sequence once acknowledged
	err           error
	done          bool
}

// sent says f was published (put), not found held.
func (f *flight) sent() bool { return f.paf != nil || f.put != nil }

// wait waits for f's ack (or, block false, looks whether it came); false
// when it has not come (or ctx ended first).
func (f *flight) wait(ctx context.Context, block bool) bool {
	if f.done {
		return true
	}
	var ack *jetstream.PubAck
	var err error
	if f.put != nil {
		if block {
			select {
			case err = <-f.put:
			case <-ctx.Done():
				return false
			}
		} else {
			select {
			case err = <-f.put:
			default:
				return false
			}
		}
		if err != nil {
			f.err = fmt.Errorf("ship checkpoint %d: %w", f.cpSeq, err)
		}
		f.done = true
		return true
	}
	if block {
		select {
		case ack = <-f.paf.Ok():
		case err = <-f.paf.Err():
		case <-ctx.Done():
			return false
		}
	} else {
		select {
		case ack = <-f.paf.Ok():
		case err = <-f.paf.Err():
		default:
			return false
		}
	}
	if err != nil {
		f.err = fmt.Errorf("ship checkpoint %d: %w", f.cpSeq, err)
	} else {
		f.streamSeq = ack.Sequence
	}
	f.done = true
	return true
}

// pipeline publishes every sealed batch after checkpoint after, in order,
// with up to Window awaiting their acks, and advances the mark (status,
// OnAck, state file) over the acknowledged batches in checkpoint order
// only: the mark is always the highest contiguous acknowledged checkpoint.
// held are batches past after that the stream already holds (by
// checkpoint seq, their stream seq): they are not published again. On the
// first failed publish or ack it stops publishing, waits out the acks still
// outstanding (each comes or times out), and returns the error; the next
// round resumes from the mark.
func (s *Shipper) pipeline(ctx context.Context, after uint64, held map[uint64]uint64) error {
	var q []*flight
	lastSave := time.Now()
	setInFlight := func() {
		s.mu.Lock()
		s.st.InFlight = len(q)
		s.mu.Unlock()
	}
	// settle advances the mark over acknowledged batches at the head of
	// q; block waits for the head's ack.
	settle := func(block bool) error {
		for len(q) > 0 && q[0].wait(ctx, block) {
			f := q[0]
			if s.store != nil && f.sent() {
				s.mu.Lock()
				s.st.Connected = f.err == nil
				s.mu.Unlock()
			}
			if f.err != nil {
				return f.err
			}
			q = q[1:]
			block = false
			s.mu.Lock()
			s.st.AckedCheckpoint, s.st.AckedSeq, s.markSeq = f.cpSeq, f.endSeq, f.streamSeq
			s.st.Batches++
			s.st.InFlight = len(q)
			s.mu.Unlock()
			if s.o.OnAck != nil {
				s.o.OnAck(f.cpSeq, f.endSeq)
			}
			// The state file is a hint (the stream is asked on resume),
			// so it is written a few times a second, not per batch.
			if time.Since(lastSave) >= stateEvery {
				lastSave = time.Now()
				if err := writeState(s.state, s.logID, s.sinkID(), f.cpSeq, f.streamSeq); err != nil {
					return err
				}
			}
		}
		return ctx.Err()
	}
	err := s.log.SealedBatches(ctx, after, func(b receipts.SealedBatch) error {
		for len(q) >= s.o.Window {
			if err := settle(true); err != nil {
				return err
			}
		}
		f, err := s.publish(ctx, b, held)
		if err != nil {
			return err
		}
		q = append(q, f)
		setInFlight()
		if s.o.OnPublish != nil && f.sent() {
			s.o.OnPublish(f.cpSeq, len(q))
		}
		return settle(false)
	})
	for err == nil && len(q) > 0 {
		err = settle(true)
	}
	if err != nil {
		// Wait out what is still in flight, so that the next round's
		// look at the stream sees every publish of this one landed or
		// failed; each ack comes or times out (AckTimeout).
		for _, f := range q {
			if f.sent() && !f.wait(ctx, true) {
				break
			}
		}
		q = nil
		setInFlight()
	}
	return err
}

// publish sends one batch without waiting for its ack, or, when held names
// it, only notes where the stream holds it.
func (s *Shipper) publish(ctx context.Context, b receipts.SealedBatch, held map[uint64]uint64) (*flight, error) {
	var cp receipts.Checkpoint
	if err := json.Unmarshal(b.Checkpoint, &cp); err != nil {
		return nil, fmt.Errorf("ship batch: parse checkpoint: %w", err)
	}
	f := &flight{cpSeq: cp.Body.CheckpointSeq, endSeq: cp.Body.BatchEndSeq}
	if seq, ok := held[f.cpSeq]; ok {
		f.streamSeq, f.done = seq, true
		return f, nil
	}
	if s.store != nil {
		s.put(ctx, b, f)
		return f, nil
	}
	msg := &nats.Msg{Subject: s.subject, Data: s.encode(b), Header: nats.Header{}}
	if max := s.nc.MaxPayload(); max > 0 && int64(len(msg.Data)) > max {
		return nil, fmt.Errorf("ship checkpoint %d: its batch is %d bytes, more than the servers' max_payload %d: lower receipts.checkpoint_every or raise max_payload",
			f.cpSeq, len(msg.Data), max)
	}
	msg.Header.Set(jetstream.MsgIDHeader, MsgID(s.logID, f.cpSeq))
	// No client-side retry: a failed publish stops the round and the
	// shipper resumes from the stream's contents (one mechanism, not two).
	paf, err := s.js.PublishMsgAsync(msg, jetstream.WithExpectStream(s.o.Stream), jetstream.WithRetryAttempts(0))
	if err != nil {
		return nil, fmt.Errorf("ship checkpoint %d to %s: %w", f.cpSeq, s.subject, err)
	}
	f.paf = paf
	return f, nil
}

// encode writes b as json.Marshal would (the same fields, in order), but
// without re-validating receipts and checkpoint, which are the log's
// canonical bytes already: on the shipping path this is most of the CPU.
func (s *Shipper) encode(b receipts.SealedBatch) []byte {
	n := len(s.logID) + len(b.KernelKey) + len(b.Checkpoint) + 80
	for _, r := range b.Receipts {
		n += len(r) + 1
	}
	buf := make([]byte, 0, n)
	buf = append(buf, `{"log_id":`...)
	buf = strconv.AppendQuote(buf, b.LogID)
	buf = append(buf, `,"kernel_key":`...)
	buf = strconv.AppendQuote(buf, b.KernelKey)
	buf = append(buf, `,"receipts":[`...)
	for i, r := range b.Receipts {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, r...)
	}
	buf = append(buf, `],"checkpoint":`...)
	buf = append(buf, b.Checkpoint...)
	// Only the first batch signed by a rotated key has statements.
	if len(b.Rotations) > 0 {
		buf = append(buf, `,"rotations":[`...)
		for i, r := range b.Rotations {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, r...)
		}
		buf = append(buf, ']')
	}
	return append(buf, '}')
}

// MsgID is a batch's Nats-Msg-Id: "<log id>:<checkpoint seq>".
func MsgID(logID string, cpSeq uint64) string {
	return logID + ":" + strconv.FormatUint(cpSeq, 10)
}

// ensureStream creates the stream when missing.
func (s *Shipper) ensureStream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	st, err := s.js.Stream(ctx, s.o.Stream)
	if err == nil {
		if d := st.CachedInfo().Config.Duplicates; d < s.o.AckTimeout+maxBackoff {
			s.fail("check stream "+s.o.Stream, fmt.Errorf("its dedup window %v is shorter than the ack timeout %v plus the %v retry backoff: a batch re-sent after a lost ack may be stored twice", d, s.o.AckTimeout, maxBackoff))
		}
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("look up stream %s: %w", s.o.Stream, err)
	}
	replicas := s.o.Replicas
	if replicas <= 0 {
		replicas = min(DefaultReplicas, max(1, len(s.nc.Servers())))
	}
	_, err = s.js.CreateStream(ctx, jetstream.StreamConfig{
		Name:        s.o.Stream,
		Description: "chio-agent sealed receipt batches, one subject per log",
		Subjects:    []string{s.o.SubjectPrefix + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		Duplicates:  s.o.Duplicates,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
	})
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("create stream %s (%d replicas): %w", s.o.Stream, replicas, err)
	}
	s.o.Logger.WithField("stream", s.o.Stream).WithField("replicas", replicas).Info("created receipt stream")
	return nil
}

// resume checks the mark against the stream, which wins over the state
// file (a crash after acks but before the file, a lost file): it reads this
// log's batches the stream holds past the mark (headers only, from the
// mark's stream sequence when known) and advances the mark over those
// that follow it without a hole. The batches past a hole (publishes that
// landed after one that failed) come back in held, by checkpoint seq, with
// their stream seq: the next round publishes only the missing ones.
func (s *Shipper) resume(ctx context.Context) (held map[uint64]uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	st, err := s.js.Stream(ctx, s.o.Stream)
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", s.o.Stream, err)
	}
	s.mu.Lock()
	mark, from := s.st.AckedCheckpoint, s.markSeq
	s.mu.Unlock()
	last, err := st.GetLastMsgForSubject(ctx, s.subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, s.setAckedSeq(mark)
	}
	if err != nil {
		return nil, fmt.Errorf("read last batch of %s: %w", s.subject, err)
	}
	top, err := s.parseID(last.Header.Get(jetstream.MsgIDHeader))
	if err != nil {
		return nil, err
	}
	if top <= mark {
		// Nothing past the mark (or a stream holding less than the file
		// says, recreated: the mark stands, as a stream's history is not
		// re-sent).
		return nil, s.setAckedSeq(mark)
	}
	if from >= last.Sequence {
		from = 0 // a sequence of another stream's life: read all
	}
	// An ephemeral consumer of this subject, headers only, no acks, on
	// one server's memory; removed after the read (or by the server once
	// idle, should the delete fail).
	cfg := jetstream.ConsumerConfig{FilterSubject: s.subject, HeadersOnly: true, AckPolicy: jetstream.AckNonePolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy, MemoryStorage: true, Replicas: 1, InactiveThreshold: 10 * time.Second}
	if from > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from+1
	}
	cons, err := st.CreateConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("read batches of %s: %w", s.subject, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		st.DeleteConsumer(dctx, cons.CachedInfo().Name)
		cancel()
	}()
	held = map[uint64]uint64{}
	for seen := uint64(0); seen < last.Sequence; {
		mb, err := cons.Fetch(1024, jetstream.FetchMaxWait(apiTimeout))
		if err != nil {
			return nil, fmt.Errorf("read batches of %s: %w", s.subject, err)
		}
		n := 0
		for m := range mb.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("read batches of %s: %w", s.subject, err)
			}
			seen = meta.Sequence.Stream
			cp, err := s.parseID(m.Headers().Get(jetstream.MsgIDHeader))
			if err != nil {
				return nil, err
			}
			if cp > mark {
				held[cp] = seen
			}
		}
		if err := mb.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("read batches of %s: %w", s.subject, err)
		}
		if n == 0 {
			return nil, fmt.Errorf("read batches of %s: the stream stopped at sequence %d of %d", s.subject, seen, last.Sequence)
		}
	}
	mark, from = advanceMark(mark, from, held)
	s.mu.Lock()
	s.st.AckedCheckpoint, s.markSeq = mark, from
	s.mu.Unlock()
	return held, s.setAckedSeq(mark)
}

// advanceMark moves mark over the checkpoints held holds right after it
// (mark+1, mark+2, ... without a hole), removing them from held, and
// returns the new mark with the sink position of the last one moved over
// (pos unchanged when none was): a resume, from a stream or a Store.
func advanceMark(mark, pos uint64, held map[uint64]uint64) (uint64, uint64) {
	for {
		p, ok := held[mark+1]
		if !ok {
			return mark, pos
		}
		delete(held, mark+1)
		mark, pos = mark+1, p
	}
}

// setAckedSeq sets the status's last acknowledged receipt from checkpoint
// cpSeq's body.
func (s *Shipper) setAckedSeq(cpSeq uint64) error {
	if cpSeq == 0 {
		return nil
	}
	cp, err := s.log.Checkpoint(cpSeq)
	if err != nil {
		return fmt.Errorf("resume shipping after checkpoint %d: %w", cpSeq, err)
	}
	s.mu.Lock()
	s.st.AckedSeq = cp.Body.BatchEndSeq
	s.mu.Unlock()
	return nil
}

// parseID reads a Nats-Msg-Id of this log: its checkpoint seq.
func (s *Shipper) parseID(id string) (uint64, error) {
	seq, ok := strings.CutPrefix(id, s.logID+":")
	n, err := strconv.ParseUint(seq, 10, 64)
	if !ok || err != nil {
		return 0, fmt.Errorf("read batches of %s: Nats-Msg-Id %q is not %s:SEQ", s.subject, id, s.logID)
	}
	return n, nil
}

// state is the file recording the last acknowledged checkpoint (every
// checkpoint up to it acknowledged) and the stream sequence of its
// message. Sink names a Store sink the mark is of (empty for NATS).
type state struct {
	LogID          string `json:"log_id"`
	Sink           string `json:"sink,omitempty"`
	AckedCheckpint uint64 `json:"acked_checkpoint_seq"`
	StreamSeq      uint64 `json:"stream_seq,omitempty"`
}

// readState reads the mark of log logID shipped to sink ("" for NATS); a
// mark of another sink (the sink changed) is no mark: the shipper starts
// over, asking the new sink what it holds.
func readState(path, logID, sink string) (cpSeq, streamSeq uint64, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("read shipping state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return 0, 0, fmt.Errorf("read shipping state %s: %w", path, err)
	}
	if st.LogID != logID {
		return 0, 0, fmt.Errorf("read shipping state %s: it is for log %s, not %s", path, st.LogID, logID)
	}
	if st.Sink != sink {
		return 0, 0, nil
	}
	return st.AckedCheckpint, st.StreamSeq, nil
}

// writeState replaces the state file durably (write, fsync, rename, fsync
// the directory).
func writeState(path, logID, sink string, cpSeq, streamSeq uint64) error {
	b, _ := json.Marshal(state{LogID: logID, Sink: sink, AckedCheckpint: cpSeq, StreamSeq: streamSeq})
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write shipping state: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write shipping state: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

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
	state   string

	stopRun func() // set by Start

	mu     sync.Mutex
	st     Status
	stream bool // the stream is known to exist
}

// Status is the shipper's state, for `chio-agent status` and metrics.
type Status struct {
	// Servers are the sink's URLs; Stream and Subject where batches go.
	Servers []string `json:"servers"`
	Stream  string   `json:"stream"`
	Subject string   `json:"subject"`
	// Connected says the client is connected to a server now.
	Connected bool `json:"connected"`
	// AckedCheckpoint is the last checkpoint the stream acknowledged;
	// AckedSeq the last receipt it seals.
	AckedCheckpoint uint64 `json:"acked_checkpoint_seq"`
	AckedSeq        uint64 `json:"acked_seq"`
	// Batches counts batches acknowledged since start.
	Batches uint64 `json:"batches_shipped"`
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
func New(l *receipts.Log, opts Options) (*Shipper, error) {
	o := opts.withDefaults()
	if err := CheckServers(o.Servers); err != nil {
		return nil, err
	}
	auth, err := authOptions(o.Credentials, o.Lookup)
	if err != nil {
		return nil, err
	}
	logID, err := l.LogID()
	if err != nil {
		return nil, err
	}
	s := &Shipper{log: l, o: o, logID: logID, subject: o.SubjectPrefix + "." + logID, state: o.StateFile}
	if s.state == "" {
		s.state = l.Path() + ".shipped"
	}
	s.st = Status{Servers: o.Servers, Stream: o.Stream, Subject: s.subject, MaxBacklog: o.MaxBacklog}
	if s.st.AckedCheckpoint, err = readState(s.state, logID); err != nil {
		return nil, err
	}
	copts := append([]nats.Option{
		nats.Name("chio-agent receipt shipper " + logID),
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
	case isAuthError(err):
		return nil, fmt.Errorf("connect receipt sink %s: the servers refuse the credentials: %w", url, err)
	case errors.Is(err, nats.ErrNoServers) || isNetError(err):
		o.Logger.WithError(err).Warn("receipt sink unreachable at start; receipts stay local and ship when it returns")
		nc, err = nats.Connect(url, append(copts, nats.RetryOnFailedConnect(true))...)
		if err != nil {
			return nil, fmt.Errorf("connect receipt sink %s: %w", url, err)
		}
	default:
		return nil, fmt.Errorf("connect receipt sink %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("connect receipt sink %s: %w", url, err)
	}
	s.nc, s.js = nc, js
	return s, nil
}

func isAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired) ||
		strings.Contains(strings.ToLower(err.Error()), "authorization")
}

func isNetError(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "connection refused") || strings.Contains(msg, "i/o timeout") ||
		strings.Contains(msg, "no route to host") || errors.Is(err, nats.ErrTimeout)
}

// LogID is the id the batches go by.
func (s *Shipper) LogID() string { return s.logID }

// Subject is where this log's batches go.
func (s *Shipper) Subject() string { return s.subject }

// Close closes the connection (Run must have returned).
func (s *Shipper) Close() { s.nc.Close() }

// Status returns the current state, its lag measured now.
func (s *Shipper) Status() Status {
	s.mu.Lock()
	st := s.st
	s.mu.Unlock()
	st.Connected = s.nc.IsConnected()
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
// the last acknowledged one, in order, one publish at a time, retrying a
// failed publish (the same batch, the same Nats-Msg-Id) after a backoff.
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
			backoff = min(backoff*2, 2*time.Second)
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

// shipOnce ships everything sealed now.
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
	if !s.nc.IsConnected() {
		return errors.New("not connected to any server")
	}
	if !known {
		if err := s.ensureStream(ctx); err != nil {
			return err
		}
		// What the stream holds of this log wins over the state file: a
		// crash after the ack but before the file, or a lost file.
		held, err := s.lastInStream(ctx)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.stream = true
		if held > s.st.AckedCheckpoint {
			s.st.AckedCheckpoint = held
		}
		acked = s.st.AckedCheckpoint
		s.mu.Unlock()
		if acked > 0 {
			if err := s.setAckedSeq(acked); err != nil {
				return err
			}
		}
	}
	if last <= acked {
		return nil
	}
	lastSave := time.Now()
	err = s.log.SealedBatches(ctx, acked, func(b receipts.SealedBatch) error {
		cpSeq, endSeq, err := s.publish(ctx, b)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.st.AckedCheckpoint, s.st.AckedSeq = cpSeq, endSeq
		s.st.Batches++
		s.mu.Unlock()
		if s.o.OnAck != nil {
			s.o.OnAck(cpSeq, endSeq)
		}
		// The state file is a hint (the stream is asked on reconnect), so
		// it is written a few times a second, not per batch.
		if time.Since(lastSave) >= stateEvery {
			lastSave = time.Now()
			return writeState(s.state, s.logID, cpSeq)
		}
		return nil
	})
	s.mu.Lock()
	cp := s.st.AckedCheckpoint
	s.mu.Unlock()
	if werr := writeState(s.state, s.logID, cp); err == nil {
		err = werr
	}
	if err != nil {
		// Ask the stream again after an error: a publish may have landed
		// without its ack reaching us.
		s.mu.Lock()
		s.stream = false
		s.mu.Unlock()
	}
	return err
}

func (s *Shipper) setAckedSeq(cpSeq uint64) error {
	cp, err := s.log.Checkpoint(cpSeq)
	if err != nil {
		return fmt.Errorf("resume shipping after checkpoint %d: %w", cpSeq, err)
	}
	s.mu.Lock()
	s.st.AckedSeq = cp.Body.BatchEndSeq
	s.mu.Unlock()
	return nil
}

// publish sends one batch and waits for its ack.
func (s *Shipper) publish(ctx context.Context, b receipts.SealedBatch) (cpSeq, endSeq uint64, err error) {
	var cp receipts.Checkpoint
	if err := json.Unmarshal(b.Checkpoint, &cp); err != nil {
		return 0, 0, fmt.Errorf("ship batch: parse checkpoint: %w", err)
	}
	msg := &nats.Msg{Subject: s.subject, Data: s.encode(b), Header: nats.Header{}}
	if max := s.nc.MaxPayload(); max > 0 && int64(len(msg.Data)) > max {
		return 0, 0, fmt.Errorf("ship checkpoint %d: its batch is %d bytes, more than the servers' max_payload %d: lower receipts.checkpoint_every or raise max_payload",
			cp.Body.CheckpointSeq, len(msg.Data), max)
	}
	msg.Header.Set(jetstream.MsgIDHeader, MsgID(s.logID, cp.Body.CheckpointSeq))
	actx, cancel := context.WithTimeout(ctx, s.o.AckTimeout)
	defer cancel()
	ack, err := s.js.PublishMsg(actx, msg, jetstream.WithExpectStream(s.o.Stream))
	if err != nil {
		return 0, 0, fmt.Errorf("ship checkpoint %d to %s: %w", cp.Body.CheckpointSeq, s.subject, err)
	}
	_ = ack // a duplicate ack (ack.Duplicate) means the stream already has it: fine
	return cp.Body.CheckpointSeq, cp.Body.BatchEndSeq, nil
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
	_, err := s.js.Stream(ctx, s.o.Stream)
	if err == nil {
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

// lastInStream is the checkpoint seq of the last batch of this log the
// stream holds, 0 for none.
func (s *Shipper) lastInStream(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	st, err := s.js.Stream(ctx, s.o.Stream)
	if err != nil {
		return 0, fmt.Errorf("look up stream %s: %w", s.o.Stream, err)
	}
	m, err := st.GetLastMsgForSubject(ctx, s.subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read last batch of %s: %w", s.subject, err)
	}
	id := m.Header.Get(jetstream.MsgIDHeader)
	seq, ok := strings.CutPrefix(id, s.logID+":")
	n, perr := strconv.ParseUint(seq, 10, 64)
	if !ok || perr != nil {
		return 0, fmt.Errorf("read last batch of %s: Nats-Msg-Id %q is not %s:SEQ", s.subject, id, s.logID)
	}
	return n, nil
}

// state is the file recording the last acknowledged checkpoint.
type state struct {
	LogID          string `json:"log_id"`
	AckedCheckpint uint64 `json:"acked_checkpoint_seq"`
}

func readState(path, logID string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read shipping state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return 0, fmt.Errorf("read shipping state %s: %w", path, err)
	}
	if st.LogID != logID {
		return 0, fmt.Errorf("read shipping state %s: it is for log %s, not %s", path, st.LogID, logID)
	}
	return st.AckedCheckpint, nil
}

// writeState replaces the state file durably (write, fsync, rename, fsync
// the directory).
func writeState(path, logID string, cpSeq uint64) error {
	b, _ := json.Marshal(state{LogID: logID, AckedCheckpint: cpSeq})
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

package session

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/backbay-labs/chio-agent/internal/nolog"
)

// Buckets of the journal file.
var (
	bktEntries = []byte("entries") // session id, 0x00, seq (8 bytes BE) → canonical entry
	bktHeads   = []byte("heads")   // session id → Head (JSON)
	bktMeta    = []byte("meta")    // "schema" → FileSchema
	bktHints   = []byte("hints")   // session id → the replicas that asked for it, one a line (replicas)
	bktOthers  = []byte("others")  // as entries: other replicas' entries of sessions handed here
	keySchema  = []byte("schema")
)

// FileSchema names the journal file's layout (docs/sessions.md).
const FileSchema = "chio-agent.session_journal.v1"

// DefaultPath is the journal file beside a receipt log: the receipt log's
// name with ".db" replaced by ".sessions.db" (chio-receipts.db →
// chio-receipts.sessions.db), or ".sessions.db" appended.
func DefaultPath(receiptPath string) string {
	dir, base := filepath.Split(receiptPath)
	return filepath.Join(dir, strings.TrimSuffix(base, ".db")+".sessions.db")
}

// Options configures Open.
type Options struct {
	// Limits bound every session. Zero values: unlimited.
	Limits Limits
	// Now is the clock of eviction from memory. Default time.Now. Entry
	// timestamps are the kernel clock's (the receipt's).
	Now func() time.Time
	// EvictAfter drops a session from memory after this long without a
	// call (it is read back from the file on its next call). Default: the
	// idle expiry, else 10 minutes.
	EvictAfter time.Duration
	// MaxInMemory bounds the sessions held in memory: past it, sessions
	// with nothing in flight are dropped (and read back from the file on
	// their next call), however recently used, so a flood of new session
	// ids costs file space, not memory. Default 65536.
	MaxInMemory int
	// HoldUntilReleased keeps each call's entry from the file until
	// Call.Release: a caller that writes the call's receipt elsewhere
	// releases it once the receipt is durable, so a crash never leaves an
	// entry naming a receipt that was lost (the reverse, a receipt whose
	// entry was lost, names a call that never took effect). The session's
	// later entries wait behind it, in chain order.
	HoldUntilReleased bool
	// ReadOnly opens the file for reading (the CLI); calls are refused.
	ReadOnly bool
	// LockTimeout bounds the wait for another process holding the file.
	// Default 2s.
	LockTimeout time.Duration
	// Logger receives failures. Default: discard.
	Logger logrus.FieldLogger
	// Self names this replica (sessions.self) when sessions are spread
	// over replicas: a session is then decided here only once it is held
	// here (a segment entry naming Self: Start, Continue), and never
	// after a handover to another replica (Seal). "": one replica, every
	// session is decided here.
	Self string
}

// Journal is the session journals of one sidecar or in-process kernel:
// per session an append-only hash chain, kept in memory under the session's
// own mutex and written to a bbolt file by one group-committing writer.
// Calls of one session serialize at its mutex; calls of other sessions run
// in parallel (the map of sessions is locked only to find one).
type Journal struct {
	db   *bolt.DB
	path string
	opts Options
	log  logrus.FieldLogger

	mu       sync.Mutex
	sessions map[string]*session

	// closeMu orders enqueues against Close closing the queue.
	closeMu sync.RWMutex
	closed  bool
	queue   chan *record
	done    chan struct{}
	failed  atomic.Pointer[error]
	stop    chan struct{}
	// lazyDelay is how long settle entries may wait to share a commit;
	// 0 commits them at once (a benchmark's baseline).
	lazyDelay time.Duration
}

// session is one session in memory. Every field but the atomics is guarded
// by mu.
type session struct {
	mu      sync.Mutex
	id      string
	loaded  bool
	evicted bool
	st      *chainState
	// lastUse is the journal clock's time of the last call, for eviction.
	lastUse time.Time
	// inflight counts allowed calls not yet settled; uncommitted counts
	// records queued for the file. Neither may be lost by an eviction.
	inflight    int
	uncommitted atomic.Int64
	// pending are the session's records not yet sent to the writer, in
	// chain order: the first may wait for its release.
	pending []*record
}

// record is one entry (and the session's head after it) on its way to the
// file.
type record struct {
	key, entry, head []byte
	id               string
	s                *session
	// lazy records are not waited for (settle entries): the writer may
	// hold them up to lazyDelay to share a later commit.
	lazy bool
	// aside, in a record with no entry (key nil), writes something else
	// in the writer's transaction (writeAside).
	aside func(*bolt.Tx) error
	// ready: released to the writer (guarded by the session's mu).
	ready bool
	done  chan struct{}
	err   error
}

// lazyDelay bounds how long an entry nobody waits for may wait for company.
const lazyDelay = 2 * time.Millisecond

// Open opens (creating) the journal file at path.
func Open(path string, opts Options) (*Journal, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.EvictAfter <= 0 {
		opts.EvictAfter = opts.Limits.IdleExpiry
		if opts.EvictAfter <= 0 {
			opts.EvictAfter = 10 * time.Minute
		}
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 2 * time.Second
	}
	if opts.MaxInMemory <= 0 {
		opts.MaxInMemory = 1 << 16
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, ReadOnly: opts.ReadOnly, FreelistType: bolt.FreelistMapType})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open session journal %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open session journal %s: %w", path, err)
	}
	j := &Journal{db: db, path: path, opts: opts, log: nolog.Or(opts.Logger), sessions: map[string]*session{}, lazyDelay: lazyDelay}
	if err := j.init(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open session journal %s: %w", path, err)
	}
	if !opts.ReadOnly {
		j.queue = make(chan *record, 4096)
		j.done = make(chan struct{})
		j.stop = make(chan struct{})
		go j.writer()
		go j.sweeper()
	}
	return j, nil
}

func (j *Journal) init() error {
	check := func(tx *bolt.Tx) error {
		m := tx.Bucket(bktMeta)
		if m == nil {
			return fmt.Errorf("%w: no %s bucket", ErrCorrupt, bktMeta)
		}
		if got := string(m.Get(keySchema)); got != FileSchema {
			return fmt.Errorf("%w: schema %q, want %q", ErrCorrupt, got, FileSchema)
		}
		if tx.Bucket(bktEntries) == nil || tx.Bucket(bktHeads) == nil {
			return fmt.Errorf("%w: missing buckets", ErrCorrupt)
		}
		return nil
	}
	if j.opts.ReadOnly {
		return j.db.View(check)
	}
	return j.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bktMeta) == nil && tx.Bucket(bktEntries) == nil && tx.Bucket(bktHeads) == nil {
			m, err := tx.CreateBucket(bktMeta)
			if err != nil {
				return err
			}
			if err := m.Put(keySchema, []byte(FileSchema)); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(bktEntries); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(bktHeads); err != nil {
				return err
			}
		}
		if err := check(tx); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bktHints); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(bktOthers)
		return err
	})
}

// Path is the journal file.
func (j *Journal) Path() string { return j.path }

// Limits are the limits every session has.
func (j *Journal) Limits() Limits { return j.opts.Limits }

// Close stops taking calls, writes what is queued and closes the file.
func (j *Journal) Close() error {
	if j.opts.ReadOnly {
		return j.db.Close()
	}
	// Entries still held go now: their callers are gone.
	j.mu.Lock()
	for _, s := range j.sessions {
		s.mu.Lock()
		for _, r := range s.pending {
			r.ready = true
		}
		j.flushPending(s)
		s.mu.Unlock()
	}
	j.mu.Unlock()
	j.closeMu.Lock()
	if j.closed {
		j.closeMu.Unlock()
		return nil
	}
	j.closed = true
	close(j.queue)
	close(j.stop)
	j.closeMu.Unlock()
	<-j.done
	err := j.db.Close()
	if p := j.failed.Load(); p != nil && err == nil {
		err = *p
	}
	if err != nil {
		return fmt.Errorf("close session journal %s: %w", j.path, err)
	}
	return nil
}

// acquire returns session id, loaded and locked.
func (j *Journal) acquire(id string) (*session, error) {
	for {
		j.mu.Lock()
		s := j.sessions[id]
		if s == nil {
			s = &session{id: id}
			j.sessions[id] = s
			if len(j.sessions) > j.opts.MaxInMemory {
				j.shrinkLocked(id)
			}
		}
		j.mu.Unlock()
		s.mu.Lock()
		if s.evicted {
			s.mu.Unlock()
			continue // evicted meanwhile: find (or make) its successor
		}
		if !s.loaded {
			st, err := j.load(id)
			if err != nil {
				s.mu.Unlock()
				return nil, err
			}
			s.st, s.loaded = st, true
		}
		return s, nil
	}
}

// load reads a session's head from the file. Its open calls are not
// stored: calls in flight when a process stopped are never settled, and
// keep their reserved request bytes.
func (j *Journal) load(id string) (*chainState, error) {
	st := newChainState(id)
	err := j.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktHeads).Get([]byte(id))
		if b == nil {
			return nil
		}
		if err := json.Unmarshal(b, &st.head); err != nil {
			return fmt.Errorf("%w: head of session %s: %w", ErrCorrupt, id, err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load session %s: %w", id, err)
	}
	return st, nil
}

// submit queues a session's record behind its pending ones and sends the
// ready ones to the writer. Called with s.mu held, so the records of one
// session reach the file in chain order.
func (j *Journal) submit(s *session, r *record) error {
	j.closeMu.RLock()
	closed := j.closed
	j.closeMu.RUnlock()
	if closed {
		return ErrClosed
	}
	s.uncommitted.Add(1)
	s.pending = append(s.pending, r)
	return j.flushPending(s)
}

// flushPending sends the session's ready records, up to the first held
// one, to the writer. Called with s.mu held.
func (j *Journal) flushPending(s *session) error {
	for len(s.pending) > 0 && s.pending[0].ready {
		if err := j.enqueue(s.pending[0]); err != nil {
			return err
		}
		s.pending[0] = nil
		s.pending = s.pending[1:]
	}
	return nil
}

// enqueue sends a record to the writer.
func (j *Journal) enqueue(r *record) error {
	j.closeMu.RLock()
	defer j.closeMu.RUnlock()
	if j.closed {
		return ErrClosed
	}
	j.queue <- r
	return nil
}

// Flush waits until everything queued so far is in the file (settle
// entries are not waited for by their calls).
func (j *Journal) Flush(ctx context.Context) error {
	if j.opts.ReadOnly {
		return nil
	}
	r := &record{done: make(chan struct{})}
	if err := j.enqueue(r); err != nil {
		return fmt.Errorf("flush session journal: %w", err)
	}
	select {
	case <-r.done:
		if r.err != nil {
			return fmt.Errorf("flush session journal: %w", r.err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writeAside runs put in the writer's next transaction and waits until it
// is in the file: it shares that transaction's fsync with the entries and
// other writes queued with it (group commit), and is never held back to
// wait for company as bbolt's Batch holds its calls (10 ms). An error of
// put fails the whole transaction, and so the journal (ErrFailed), like
// an entry that cannot be written: put only stores, what it stores is
// checked before.
func (j *Journal) writeAside(put func(*bolt.Tx) error) error {
	r, err := j.queueAside(put)
	if err != nil {
		return err
	}
	<-r.done
	return r.err
}

// queueAside queues put for the writer's next transaction without waiting:
// a record queued after it is in the file only once put is (the writer
// commits in queue order, and stops at its first failure).
func (j *Journal) queueAside(put func(*bolt.Tx) error) (*record, error) {
	if j.opts.ReadOnly {
		return nil, errors.New("the journal is open read-only")
	}
	r := &record{aside: put, done: make(chan struct{})}
	if err := j.enqueue(r); err != nil {
		return nil, err
	}
	return r, nil
}

// writer commits queued records: whatever is queued when it starts a
// transaction goes into that one (group commit), so a lone call pays one
// fsync and concurrent calls share theirs.
func (j *Journal) writer() {
	defer close(j.done)
	batch := make([]*record, 0, cap(j.queue))
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for r := range j.queue {
		batch = append(batch[:0], r)
		waited := !r.lazy
		open := true
	drain:
		for open && len(batch) < cap(batch) {
			select {
			case r, ok := <-j.queue:
				if !ok {
					open = false
					break drain
				}
				batch = append(batch, r)
				waited = waited || !r.lazy
			default:
				if waited || j.lazyDelay == 0 {
					break drain
				}
				// Nobody waits for these (settle entries): hold them a
				// moment so they share the next call's fsync instead of
				// making it wait behind one of their own.
				timer.Reset(j.lazyDelay)
				select {
				case r, ok := <-j.queue:
					timer.Stop()
					if !ok {
						open = false
						break drain
					}
					batch = append(batch, r)
					waited = waited || !r.lazy
				case <-timer.C:
					break drain
				}
			}
		}
		err := j.commit(batch)
		for _, r := range batch {
			r.err = err
			if r.s != nil {
				r.s.uncommitted.Add(-1)
			}
			close(r.done)
		}
	}
}

func (j *Journal) commit(batch []*record) error {
	if p := j.failed.Load(); p != nil {
		return *p
	}
	err := j.db.Update(func(tx *bolt.Tx) error {
		eb, hb := tx.Bucket(bktEntries), tx.Bucket(bktHeads)
		// Each session's last head in the batch is the one that counts.
		heads := make(map[string][]byte, len(batch))
		for _, r := range batch {
			if r.key == nil {
				// A Flush barrier, or a write aside.
				if r.aside != nil {
					if err := r.aside(tx); err != nil {
						return err
					}
				}
				continue
			}
			if err := eb.Put(r.key, r.entry); err != nil {
				return err
			}
			heads[r.id] = r.head
		}
		for id, h := range heads {
			if err := hb.Put([]byte(id), h); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("%w: write %s: %w", ErrFailed, j.path, err)
		j.failed.CompareAndSwap(nil, &err)
		j.log.WithError(err).Error("session journal write failed: session-aware calls are refused until restart")
	}
	return err
}

// sweeper evicts idle sessions from memory.
func (j *Journal) sweeper() {
	every := min(max(j.opts.EvictAfter/2, time.Second), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-j.stop:
			return
		case <-t.C:
			j.Sweep()
		}
	}
}

// Sweep drops from memory the sessions idle for EvictAfter with nothing in
// flight and nothing waiting to be written; their next call reads them back
// from the file. It returns how many sessions are still in memory.
func (j *Journal) Sweep() int {
	now := j.opts.Now()
	j.mu.Lock()
	defer j.mu.Unlock()
	for id, s := range j.sessions {
		if !s.mu.TryLock() {
			continue // in use
		}
		if s.inflight == 0 && s.uncommitted.Load() == 0 && now.Sub(s.lastUse) >= j.opts.EvictAfter {
			s.evicted = true
			delete(j.sessions, id)
		}
		s.mu.Unlock()
	}
	return len(j.sessions)
}

// shrinkLocked drops sessions with nothing in flight and nothing to write
// until a tenth of MaxInMemory is free (keep: the session being added).
// Called with j.mu held.
func (j *Journal) shrinkLocked(keep string) {
	target := j.opts.MaxInMemory - j.opts.MaxInMemory/10 - 1
	for id, s := range j.sessions {
		if len(j.sessions) <= target {
			return
		}
		if id == keep || !s.mu.TryLock() {
			continue
		}
		if s.inflight == 0 && s.uncommitted.Load() == 0 {
			s.evicted = true
			delete(j.sessions, id)
		}
		s.mu.Unlock()
	}
}

func entryKey(id string, seq uint64) []byte {
	k := make([]byte, 0, len(id)+9)
	k = append(k, id...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

// Err is the write failure that stopped the journal (ErrFailed), or nil.
func (j *Journal) Err() error {
	if p := j.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// InMemory counts the sessions held in memory.
func (j *Journal) InMemory() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.sessions)
}

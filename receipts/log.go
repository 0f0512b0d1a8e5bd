package receipts

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/backbay-labs/chio-agent/internal/nolog"
	"github.com/backbay-labs/chio-agent/kernel"
)

// FormatVersion is written in every log's header. Open refuses any other,
// except formatV1, which a writable Open migrates (migrateV1) and a
// read-only one reads as it is.
const FormatVersion = "chio-receipt-log/2"

// formatV1 kept the id index keyed by id (bucket ids: id → seq).
const formatV1 = "chio-receipt-log/1"

// Mode says when Append returns.
type Mode int

const (
	// ModeSync: Append returns once its receipt is durable (committed and
	// fsynced). The default, and the one the node agent uses so that no
	// connection is allowed before its receipt is on disk.
	ModeSync Mode = iota
	// ModeAsync: Append returns as soon as the receipt is queued. A crash
	// loses what is queued; the next Open counts and records the loss.
	ModeAsync
)

func (m Mode) String() string {
	if m == ModeAsync {
		return "async"
	}
	return "sync"
}

// ParseMode reads "sync" or "async".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "sync", "":
		return ModeSync, nil
	case "async":
		return ModeAsync, nil
	}
	return ModeSync, fmt.Errorf("parse durability mode %q: want sync or async", s)
}

// Options configure Open. The zero value opens a writable log in sync mode
// with the defaults below, and needs only Key.
type Options struct {
	// Key is the kernel's Ed25519 signing key. It signs checkpoints, and
	// every appended receipt must name its public key. Required unless
	// ReadOnly. A new log records it in its header; an existing log whose
	// header names another key is refused unless RotateKey is set.
	Key ed25519.PrivateKey
	// RotateKey lets Open continue a log whose header names a different
	// key, recording the rotation (from which sequence number the new key
	// signs) in the log. Default false. Danger: set it only when the
	// operator means to rotate; a key that changed by accident (a lost key
	// file regenerated) must stop the agent instead.
	RotateKey bool
	// PreviousKey, with RotateKey, is the private key the log is signed by
	// so far. Open then seals the unsealed tail with it and records a key
	// rotation statement signed by both keys (rotation.go), which a central
	// store and an evidence package's importer need to accept the new key
	// for this log. Without it the rotation is recorded for this node only:
	// a witness refuses the new key's batches (the operator starts a new
	// log for them). Default nil. Danger: it is the old signing key; read it
	// for the rotation and keep it no longer than the old key was kept.
	PreviousKey ed25519.PrivateKey
	// ReadOnly opens the file read-only under a shared lock: reads, proofs,
	// verify and export work; Append returns ErrReadOnly. Default false.
	ReadOnly bool
	// Mode is the durability mode. Default ModeSync.
	Mode Mode
	// CheckpointEvery is the number of receipts per checkpoint batch.
	// Default 100.
	CheckpointEvery int
	// CheckpointIdle seals the unsealed tail after this much time without a
	// commit, so a quiet node still checkpoints its last receipts. Default
	// 1s.
	CheckpointIdle time.Duration
	// CheckpointMaxDelay seals the tail once its oldest receipt has waited
	// this long, even under a steady trickle that is never idle. Default
	// 30s.
	CheckpointMaxDelay time.Duration
	// QueueSize bounds the receipts waiting for the committer; a full queue
	// blocks Append (backpressure) rather than growing memory. Default 4096.
	QueueSize int
	// MaxBatch is the most receipts one transaction (one fsync) commits.
	// Default 2048.
	MaxBatch int
	// AsyncLinger, in ModeAsync only, lets the committer wait this long after
	// the first queued receipt for more before it commits, so that a trickle
	// of receipts shares fsyncs instead of paying one each (nobody waits on
	// an async commit). Default 5ms; negative disables. It widens what a
	// crash can lose by at most this much, and the log counts such losses.
	AsyncLinger time.Duration
	// LockTimeout is how long Open waits for another process to release the
	// file before failing with ErrLocked. Default 2s. Zero means the default;
	// negative waits forever (danger: a reader then hangs behind a daemon).
	LockTimeout time.Duration
	// Logger receives operational messages (recovered losses, rotations,
	// commit failures). Default: discarded.
	Logger logrus.FieldLogger
	// Now is the clock for checkpoint issued_at and records. Default
	// time.Now; tests set it.
	Now func() time.Time
}

func (o *Options) withDefaults() Options {
	c := *o
	if c.CheckpointEvery <= 0 {
		c.CheckpointEvery = 100
	}
	if c.CheckpointIdle <= 0 {
		c.CheckpointIdle = time.Second
	}
	if c.CheckpointMaxDelay <= 0 {
		c.CheckpointMaxDelay = 30 * time.Second
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 4096
	}
	if c.AsyncLinger == 0 {
		c.AsyncLinger = 5 * time.Millisecond
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 2048
	}
	switch {
	case c.LockTimeout == 0:
		c.LockTimeout = 2 * time.Second
	case c.LockTimeout < 0:
		c.LockTimeout = 0 // bbolt: wait forever
	}
	c.Logger = nolog.Or(c.Logger)
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Log field keys.
const (
	fieldPath       = "path"
	fieldSeq        = "seq"
	fieldCheckpoint = "checkpoint"
	fieldLost       = "lost"
	fieldKey        = "kernel_key"
	fieldBatch      = "batch"
)

// Bucket and header key names: the on-disk layout (docs/receipt-log.md).
var (
	bktMeta        = []byte("meta")
	bktReceipts    = []byte("receipts")
	bktSeqIDs      = []byte("seq_ids")
	bktIDs         = []byte("ids") // format 1 only
	bktTime        = []byte("by_time")
	bktDecision    = []byte("by_decision")
	bktWorkload    = []byte("by_workload")
	bktHost        = []byte("by_host")
	bktCheckpoints = []byte("checkpoints")
	bktCPByEnd     = []byte("checkpoint_by_end")
	bktKeys        = []byte("keys")
	bktLosses      = []byte("losses")

	allBuckets = [][]byte{bktMeta, bktReceipts, bktSeqIDs, bktTime, bktDecision, bktWorkload, bktHost,
		bktCheckpoints, bktCPByEnd, bktKeys, bktLosses}
	bucketsV1 = [][]byte{bktMeta, bktReceipts, bktIDs, bktTime, bktDecision, bktWorkload, bktHost,
		bktCheckpoints, bktCPByEnd, bktKeys, bktLosses}

	metaFormat    = []byte("format")
	metaKernelKey = []byte("kernel_key")
	metaLogID     = []byte("log_id")
	metaCreated   = []byte("created_at")
	metaLastSeq   = []byte("last_seq")
	metaAccepted  = []byte("accepted")
	metaChain     = []byte("chain_frontier")
)

// KeyRecord is one entry of the key history: from SinceSeq on, receipts
// and checkpoints are signed by KernelKey.
type KeyRecord struct {
	// KernelKey is the public key, hex.
	KernelKey string `json:"kernel_key"`
	// SinceSeq is the first receipt sequence number signed by this key.
	SinceSeq uint64 `json:"since_seq"`
	// RecordedAt is when the key was installed, unix seconds.
	RecordedAt int64 `json:"recorded_at"`
	// PreviousKey is the key it replaced; "" for the first.
	PreviousKey string `json:"previous_key,omitempty"`
	// Rotations are the key rotation statements (canonical JSON, oldest
	// first) that hand the log from PreviousKey to KernelKey: one, or more
	// when a key was rotated again before it signed a receipt. Absent when
	// the rotation was made without the previous private key, and in every
	// record written before statements existed.
	Rotations []json.RawMessage `json:"rotations,omitempty"`
}

// LossRecord says that receipts accepted in async mode were lost in a crash.
type LossRecord struct {
	// AfterSeq is the last durable sequence number when the loss was found.
	AfterSeq uint64 `json:"after_seq"`
	// Count is the number of accepted receipts that never became durable.
	Count uint64 `json:"count"`
	// DetectedAt is when Open found the loss, unix seconds.
	DetectedAt int64 `json:"detected_at"`
}

type reqKind uint8

const (
	reqAppend reqKind = iota
	reqFlush          // reply once everything queued before it is durable
	reqSeal           // like reqFlush, and checkpoint the tail
	// reqAbandoned is an AppendLater whose receipt could not be made or
	// signed: nothing is stored, and the crash-loss mark keeps counting it
	// as lost (as Reservation.Abandon does).
	reqAbandoned
)

type request struct {
	kind  reqKind
	entry Entry
	leaf  Hash
	done  chan result // nil for async appends
	// counted: the accepted mark already counts it (AppendPrepared counts
	// a receipt when it accepts it, before it is signed).
	counted bool
	// build, when set (Reservation.AppendLater), makes the receipt: the
	// committer calls it and signs what it returns, in its batch, before
	// the transaction; entry and leaf are empty until then.
	build func() (*kernel.Prepared, error)
}

type result struct {
	seq uint64
	err error
}

// chainState is what the committer needs to continue the checkpoint chain.
type chainState struct {
	lastSeq      uint64
	pending      []Hash // leaves of receipts after the last checkpoint
	pendingStart uint64
	pendingSince time.Time
	cpSeq        uint64
	prevSHA      string
	chain        frontier
}

func (s *chainState) clone() chainState {
	c := *s
	c.pending = append([]Hash(nil), s.pending...)
	c.chain = s.chain.clone()
	return c
}

// Log is an open receipt log. Its methods are safe for concurrent use.
type Log struct {
	path string
	db   *bolt.DB
	// broken is set when bbolt panicked on a damaged page (see view):
	// its locks may still be held, so nothing touches db again.
	broken atomic.Pointer[error]
	opts   Options
	log    logrus.FieldLogger
	pubHex string

	queue chan *request
	// kick ends the async committer's linger early (capacity 1): a batch
	// is full, or a Flush, seal or Close is waiting.
	kick chan struct{}
	// urgent counts the queued requests that must not wait for a linger
	// (Flush, seal), plus one once Close has closed the queue.
	urgent      atomic.Int64
	mark        *acceptMark
	replies     chan replyBatch // committed batches whose waiters to wake
	repliesDone chan struct{}

	closeMu sync.RWMutex // Append holds it shared while enqueueing
	closed  bool
	// signing is held shared by each open reservation (Reserve, and
	// AppendPrepared in async mode); Flush and Close take it to wait for
	// them. reservations bounds them (maxReservations).
	signing      sync.RWMutex
	reservations chan struct{}
	done         chan struct{} // closed when the committer exits
	failed       atomic.Pointer[error]

	st chainState // owned by the committer goroutine after Open

	notifyMu sync.Mutex
	notify   chan struct{} // closed and replaced after each commit
	durable  atomic.Uint64

	recovery Recovery

	// ids finds a seq by receipt id (writable logs); v1 says a read-only
	// log is in format 1, whose id index is the ids bucket.
	ids *idIndex
	v1  bool

	// crashOnClose makes Close skip sealing the tail, as a crash would;
	// tests only.
	crashOnClose bool
}

// Recovery is what Open found and did about an unclean shutdown.
type Recovery struct {
	// LastSeq is the last durable receipt at open.
	LastSeq uint64
	// Unsealed is the number of receipts after the last checkpoint at open;
	// the next checkpoint seals them.
	Unsealed int
	// Lost is the number of receipts accepted (queued) before the previous
	// process stopped that never became durable. Non-zero only after a crash
	// in async mode (or of sync Appends that had not yet returned).
	Lost uint64
	// Rotated is true when Open recorded a key rotation.
	Rotated bool
}

// Open opens the receipt log at path, creating it when it does not exist
// (unless ReadOnly). A writable open finds the tail, checks the last
// checkpoint's signature and chain, and continues the same chain; receipts
// written after the last checkpoint are sealed by the next one.
func Open(path string, opts Options) (*Log, error) {
	o := opts.withDefaults()
	l := &Log{path: path, opts: o, log: o.Logger.WithField(fieldPath, path), notify: make(chan struct{})}
	if !o.ReadOnly {
		if len(o.Key) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("open receipt log %s: %w", path, ErrNoKey)
		}
		l.pubHex = hex.EncodeToString(o.Key.Public().(ed25519.PublicKey))
	}
	f, err := openLogFile(path, o)
	if err != nil {
		return nil, err
	}
	db, err := openBolt(path, f, o)
	if err != nil {
		return nil, err
	}
	l.db = db
	if o.ReadOnly {
		if err := l.checkHeaderRO(); err != nil {
			db.Close()
			return nil, err
		}
		return l, nil
	}
	if err := l.openWritable(); err != nil {
		db.Close()
		l.mark.close()
		return nil, err
	}
	l.queue = make(chan *request, o.QueueSize)
	l.kick = make(chan struct{}, 1)
	l.reservations = make(chan struct{}, maxReservations)
	l.done = make(chan struct{})
	l.replies = make(chan replyBatch, 4)
	l.repliesDone = make(chan struct{})
	go l.notifier()
	go l.run()
	return l, nil
}

// openLogFile opens the file at path for bbolt and checks it before bbolt
// maps it (checkBoltFile): a regular file (opened without blocking, so a
// FIFO cannot hang the open, then checked on the open descriptor), under a
// shared lock so that no writer changes it while it is checked, and whole.
// A missing file is created (writable opens only), empty, for bbolt to
// initialise. Nothing is written to an existing file.
func openLogFile(path string, o Options) (f *os.File, err error) {
	flag, created := os.O_RDONLY, false
	if !o.ReadOnly {
		flag = os.O_RDWR
	}
	f, err = os.OpenFile(path, flag|syscall.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		if o.ReadOnly {
			return nil, fmt.Errorf("open receipt log %s: %w", path, ErrNotFound)
		}
		f, err = os.OpenFile(path, flag|os.O_CREATE|os.O_EXCL|syscall.O_NONBLOCK, 0o600)
		created = err == nil
	}
	if err != nil {
		return nil, fmt.Errorf("open receipt log %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open receipt log %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("open receipt log %s: not a regular file (mode %s): %w", path, st.Mode(), ErrCorrupt)
	}
	if created {
		return f, nil
	}
	if err := lockShared(f, o.LockTimeout); err != nil {
		return nil, fmt.Errorf("open receipt log %s: %w", path, err)
	}
	// Size after the lock: a writer that held the file may have grown it.
	if st, err = f.Stat(); err != nil {
		return nil, fmt.Errorf("open receipt log %s: %w", path, err)
	}
	if st.Size() == 0 {
		// bbolt would initialise an empty file in place; an empty file where
		// a log should be is evidence of truncation, so it is left alone.
		return nil, fmt.Errorf("open receipt log %s: file is empty (truncated?): %w", path, ErrCorrupt)
	}
	if err := checkBoltFile(f, st.Size()); err != nil {
		return nil, fmt.Errorf("open receipt log %s: %w", path, err)
	}
	return f, nil
}

// lockShared takes a shared flock on f, retrying until timeout (0: forever),
// as bbolt does for its own lock, which then converts this one in place.
func lockShared(f *os.File, timeout time.Duration) error {
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case err != syscall.EWOULDBLOCK && err != syscall.EINTR:
			return fmt.Errorf("lock: %w", err)
		case timeout > 0 && time.Now().After(deadline):
			return fmt.Errorf("%w (waited %s; is chio-agent running?)", ErrLocked, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// openBolt hands the checked file f to bbolt, which takes it over (and
// closes it on failure). A panic or memory fault inside bbolt, which the
// check should have made impossible, still becomes an error.
func openBolt(path string, f *os.File, o Options) (db *bolt.DB, err error) {
	handed := false
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			// bbolt unwound without closing the file it was handed.
			db, err, handed = nil, fmt.Errorf("open receipt log %s: unreadable database (%v): %w", path, r, ErrCorrupt), false
		}
		if err != nil && !handed {
			f.Close()
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout:  o.LockTimeout,
		ReadOnly: o.ReadOnly,
		// The map freelist is not synced: bbolt rebuilds it on open, which
		// saves a write per commit on the hot path.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
		// Large enough that readers in this process rarely block a remap.
		InitialMmapSize: 64 << 20,
		OpenFile: func(string, int, os.FileMode) (*os.File, error) {
			handed = true
			return f, nil
		},
	})
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		wait := o.LockTimeout
		return nil, fmt.Errorf("open receipt log %s: %w (waited %s; is chio-agent running?)", path, ErrLocked, wait)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrInvalidMapping):
		return nil, fmt.Errorf("open receipt log %s: %v: %w", path, err, ErrCorrupt)
	}
	return nil, fmt.Errorf("open receipt log %s: %w", path, err)
}

// view runs fn in a read transaction, turning a bbolt panic on a damaged
// page, or a memory fault in its mapping (a file truncated under it), into an
// ErrCorrupt error instead of a crash. Open's file check makes both
// unexpected; this is the last line.
//
// bbolt does not release its locks when it panics (a rollback that rescans
// a damaged tree panics inside bbolt, past the transaction's own cleanup),
// so after a recovered panic the database is left alone: every later
// view, update and Close returns the first error instead of waiting on a
// lock that will never be released.
func (l *Log) view(fn func(tx *bolt.Tx) error) (err error) {
	if p := l.broken.Load(); p != nil {
		return *p
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("read receipt log %s: damaged page (%v): %w", l.path, r, ErrCorrupt)
			l.broken.CompareAndSwap(nil, &err)
		}
	}()
	return l.db.View(fn)
}

func (l *Log) update(fn func(tx *bolt.Tx) error) (err error) {
	if p := l.broken.Load(); p != nil {
		return *p
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("write receipt log %s: damaged page (%v): %w", l.path, r, ErrCorrupt)
			l.broken.CompareAndSwap(nil, &err)
		}
	}()
	return l.db.Update(fn)
}

// checkBuckets checks the header's format and that the format's buckets
// are there; v1 reports a format-1 log.
func checkBuckets(tx *bolt.Tx, path string) (v1 bool, err error) {
	want := allBuckets
	switch v := tx.Bucket(bktMeta).Get(metaFormat); string(v) {
	case FormatVersion:
	case formatV1:
		v1, want = true, bucketsV1
	default:
		return false, fmt.Errorf("open receipt log %s: format %q, this build reads %q: %w", path, v, FormatVersion, ErrFormat)
	}
	for _, b := range want {
		if tx.Bucket(b) == nil {
			return false, fmt.Errorf("open receipt log %s: bucket %q missing: %w", path, b, ErrCorrupt)
		}
	}
	return v1, nil
}

func (l *Log) checkHeaderRO() error {
	return l.view(func(tx *bolt.Tx) error {
		if tx.Bucket(bktMeta) == nil {
			return fmt.Errorf("open receipt log %s: no header (not a receipt log?): %w", l.path, ErrCorrupt)
		}
		var err error
		l.v1, err = checkBuckets(tx, l.path)
		return err
	})
}

// openWritable checks everything it reads before it writes anything: the
// header, the key, the tail (loadState) and the evidence (checkOnOpen), in
// one read transaction; only a log that passes is initialised, rotated or
// has a loss recorded. A failed open leaves the file as it was.
func (l *Log) openWritable() error {
	now := l.opts.Now()
	var logID []byte
	var headerAccepted uint64
	var fresh, rotate, v1 bool
	read := func(tx *bolt.Tx) error {
		if tx.Bucket(bktMeta) == nil {
			// A bbolt file with buckets but no header is someone else's
			// database, or a log that lost its header: never write over it.
			if k, _ := tx.Cursor().First(); k != nil {
				return fmt.Errorf("open receipt log %s: database has no receipt log header (bucket %q found): %w", l.path, k, ErrCorrupt)
			}
			fresh = true
			return nil
		}
		var err error
		if v1, err = checkBuckets(tx, l.path); err != nil {
			return err
		}
		meta := tx.Bucket(bktMeta)
		logID = append([]byte(nil), meta.Get(metaLogID)...)
		if v := meta.Get(metaAccepted); len(v) == 8 {
			headerAccepted = getU64(v)
		}
		if rotate, err = l.checkKey(tx); err != nil {
			return err
		}
		if err := l.loadState(tx); err != nil {
			return err
		}
		if err := l.checkOnOpen(tx); err != nil {
			return err
		}
		if v1 {
			return nil
		}
		l.ids, err = loadIDIndex(tx, l.st.lastSeq)
		if err != nil {
			return fmt.Errorf("open receipt log %s: %w", l.path, err)
		}
		return nil
	}
	if err := l.view(read); err != nil {
		return err
	}
	if v1 {
		// Checked in full above, as any writable open is: only then is
		// the index rewritten, in one transaction, and read again.
		if err := l.update(l.migrateV1); err != nil {
			return err
		}
		if err := l.view(read); err != nil {
			return err
		}
	}
	if fresh {
		if err := l.update(func(tx *bolt.Tx) error { return l.initLog(tx, now) }); err != nil {
			return err
		}
		fresh = false
		if err := l.view(read); err != nil {
			return err
		}
	}
	if rotate {
		if err := l.update(func(tx *bolt.Tx) error { return l.recordRotation(tx, now) }); err != nil {
			return err
		}
	}
	l.durable.Store(l.st.lastSeq)
	l.recovery.LastSeq = l.st.lastSeq
	l.recovery.Unsealed = len(l.st.pending)

	mark, found, err := openAcceptMark(l.path+".accepted", logID)
	if err != nil {
		return err
	}
	l.mark = mark
	accepted := max(found, headerAccepted)
	if accepted > l.st.lastSeq {
		lost := accepted - l.st.lastSeq
		l.recovery.Lost = lost
		rec := LossRecord{AfterSeq: l.st.lastSeq, Count: lost, DetectedAt: now.Unix()}
		data, _ := json.Marshal(rec)
		if err := l.update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bktLosses)
			seq, _ := b.NextSequence()
			if err := b.Put(u64key(seq), data); err != nil {
				return err
			}
			return tx.Bucket(bktMeta).Put(metaAccepted, u64key(l.st.lastSeq))
		}); err != nil {
			return fmt.Errorf("record lost receipts in %s: %w", l.path, err)
		}
		l.log.WithFields(logrus.Fields{fieldLost: lost, fieldSeq: l.st.lastSeq}).
			Warn("receipts accepted before the last crash were never made durable")
	}
	mark.v.Store(l.st.lastSeq)
	if l.st.lastSeq > 0 || l.recovery.Unsealed > 0 {
		l.log.WithFields(logrus.Fields{fieldSeq: l.st.lastSeq, fieldCheckpoint: l.st.cpSeq}).
			Info("receipt log reopened")
	}
	return nil
}

func (l *Log) initLog(tx *bolt.Tx, now time.Time) error {
	for _, b := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create receipt log %s: %w", l.path, err)
		}
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return fmt.Errorf("create receipt log %s: %w", l.path, err)
	}
	meta := tx.Bucket(bktMeta)
	kr, _ := json.Marshal(KeyRecord{KernelKey: l.pubHex, SinceSeq: 1, RecordedAt: now.Unix()})
	for _, kv := range [][2][]byte{
		{metaFormat, []byte(FormatVersion)},
		{metaKernelKey, []byte(l.pubHex)},
		{metaLogID, id},
		{metaCreated, u64key(uint64(now.Unix()))},
		{metaLastSeq, u64key(0)},
		{metaAccepted, u64key(0)},
	} {
		if err := meta.Put(kv[0], kv[1]); err != nil {
			return fmt.Errorf("create receipt log %s: %w", l.path, err)
		}
	}
	if err := tx.Bucket(bktKeys).Put(u64key(1), kr); err != nil {
		return fmt.Errorf("create receipt log %s: %w", l.path, err)
	}
	l.log.WithField(fieldKey, l.pubHex).Info("created receipt log")
	return nil
}

// checkKey reports whether the log's key differs from the signing key, which
// is an error unless rotation was asked for. A previous key given for the
// rotation must be the one the log is signed by.
func (l *Log) checkKey(tx *bolt.Tx) (rotate bool, err error) {
	logKey := string(tx.Bucket(bktMeta).Get(metaKernelKey))
	if logKey == l.pubHex {
		return false, nil
	}
	if !l.opts.RotateKey {
		return false, fmt.Errorf("open receipt log %s: log is signed by kernel key %s but the signing key given is %s; refusing to continue with another key (rotate explicitly): %w",
			l.path, logKey, l.pubHex, ErrKeyMismatch)
	}
	if p := l.opts.PreviousKey; p != nil {
		if len(p) != ed25519.PrivateKeySize {
			return false, fmt.Errorf("open receipt log %s: previous key is not an Ed25519 private key: %w", l.path, ErrKeyMismatch)
		}
		if prev := hex.EncodeToString(p.Public().(ed25519.PublicKey)); prev != logKey {
			return false, fmt.Errorf("open receipt log %s: rotating from previous key %s, but the log is signed by %s: %w",
				l.path, prev, logKey, ErrKeyMismatch)
		}
	}
	return true, nil
}

// recordRotation records that the signing key signs from the next seq on.
// With the previous private key it first seals the unsealed tail with
// that key, so that every receipt before the new key's first is under a
// checkpoint of the old one, then records the rotation statement both
// keys sign, anchored to that last checkpoint. A log with nothing to
// anchor to (no receipt yet) is refused: it has no history to hand over,
// and a new log with the new key is the same thing.
func (l *Log) recordRotation(tx *bolt.Tx, now time.Time) error {
	meta := tx.Bucket(bktMeta)
	logKey := string(meta.Get(metaKernelKey))
	last := l.st.lastSeq
	var stmt []byte
	if prev := l.opts.PreviousKey; prev != nil {
		if len(l.st.pending) > 0 {
			if err := l.checkpointWith(tx, prev, logKey); err != nil {
				return fmt.Errorf("seal receipt log %s with the previous key: %w", l.path, err)
			}
		}
		if l.st.cpSeq == 0 {
			return fmt.Errorf("rotate key of receipt log %s: the log holds no receipt to hand over; start a new log with the new key instead: %w", l.path, ErrKeyMismatch)
		}
		keys, err := readKeys(tx)
		if err != nil {
			return err
		}
		logID, err := LogIDOf(keys[0].KernelKey)
		if err != nil {
			return fmt.Errorf("rotate key of receipt log %s: %w", l.path, err)
		}
		stmt, err = SignRotation(RotationBody{LogID: logID, PreviousKey: logKey, NewKey: l.pubHex, FirstSeq: last + 1,
			AnchorCheckpointSeq: l.st.cpSeq, AnchorCheckpointSHA256: l.st.prevSHA, IssuedAt: now.Unix()}, prev, l.opts.Key)
		if err != nil {
			return err
		}
	}
	kr := KeyRecord{KernelKey: l.pubHex, SinceSeq: last + 1, RecordedAt: now.Unix(), PreviousKey: logKey}
	if stmt != nil {
		kr.Rotations = []json.RawMessage{stmt}
	}
	if old := tx.Bucket(bktKeys).Get(u64key(last + 1)); old != nil && last > 0 {
		// The key being replaced signed no receipt: its record gives way to
		// this one, which goes on from the key before it. Its statements
		// continue into this one's; a rotation to it that had none leaves
		// this one without any either (the chain of evidence is broken).
		// A key that sealed a checkpoint (the previous key's tail, after a
		// rotation without it) must stay in the history, which has one
		// record per first seq: that rotation waits for a receipt.
		if _, data := tx.Bucket(bktCheckpoints).Cursor().Last(); data != nil {
			if cp, err := parseCheckpoint(data); err == nil && cp.Body.KernelKey == logKey {
				return fmt.Errorf("rotate key of receipt log %s: key %s sealed checkpoint %d but has signed no receipt yet; the key history holds one key per first seq, so rotate again once it has signed one: %w",
					l.path, logKey, cp.Body.CheckpointSeq, ErrKeyMismatch)
			}
		}
		var replaced KeyRecord
		if err := json.Unmarshal(old, &replaced); err != nil {
			return fmt.Errorf("rotate key of receipt log %s: key record at seq %d: %v: %w", l.path, last+1, err, ErrCorrupt)
		}
		kr.PreviousKey = replaced.PreviousKey
		kr.Rotations = nil
		if len(replaced.Rotations) > 0 && stmt != nil {
			kr.Rotations = append(replaced.Rotations, stmt)
		} else if stmt != nil {
			l.log.WithField(fieldKey, logKey).Warn("key rotation statement dropped: the rotation to the previous key was recorded without its predecessor's key")
		}
	}
	data, err := json.Marshal(kr)
	if err != nil {
		return fmt.Errorf("record key rotation in %s: %w", l.path, err)
	}
	if err := tx.Bucket(bktKeys).Put(u64key(last+1), data); err != nil {
		return fmt.Errorf("record key rotation in %s: %w", l.path, err)
	}
	if err := meta.Put(metaKernelKey, []byte(l.pubHex)); err != nil {
		return fmt.Errorf("record key rotation in %s: %w", l.path, err)
	}
	l.recovery.Rotated = true
	l.log.WithFields(logrus.Fields{fieldKey: l.pubHex, "previous_key": logKey, fieldSeq: last + 1, "statement": stmt != nil}).
		Warn("rotated receipt log signing key")
	return nil
}

// migrateV1 rewrites a format-1 log's id index (ids: id → seq, one random
// leaf dirtied per receipt) as format 2's seq_ids (seq → id, appended in
// order), in the one transaction that also sets the new format, so a crash
// leaves the old log or the new one, never a mix. The ids are read from the
// receipts themselves, and the old index must agree with them entry for
// entry: an index that names another seq, misses a receipt or holds one
// too many is refused (ErrCorrupt) rather than carried over or dropped.
func (l *Log) migrateV1(tx *bolt.Tx) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("migrate receipt log %s to %s: %s: %w", l.path, FormatVersion, fmt.Sprintf(format, args...), ErrCorrupt)
	}
	old := tx.Bucket(bktIDs)
	seqIDs, err := tx.CreateBucket(bktSeqIDs)
	if err != nil {
		return fmt.Errorf("migrate receipt log %s: %w", l.path, err)
	}
	seqIDs.FillPercent = appendOnlyFill
	var n uint64
	c := tx.Bucket(bktReceipts).Cursor()
	for k, data := c.First(); k != nil; k, data = c.Next() {
		n++
		seq := getU64(k)
		id := make([]byte, 32)
		if s := indexedString(data, []string{"id"}); !decodeHex(id, s) {
			return fail("receipt seq %d has no 64-hex-digit id", seq)
		}
		if v := old.Get(id); len(v) != 8 || getU64(v) != seq {
			return fail("id index does not map receipt seq %d's id %x to it", seq, id)
		}
		if err := seqIDs.Put(bytes.Clone(k), id); err != nil {
			return fmt.Errorf("migrate receipt log %s: %w", l.path, err)
		}
	}
	if m := uint64(old.Stats().KeyN); m != n {
		return fail("id index has %d entries for %d receipts", m, n)
	}
	if err := tx.DeleteBucket(bktIDs); err != nil {
		return fmt.Errorf("migrate receipt log %s: %w", l.path, err)
	}
	if err := tx.Bucket(bktMeta).Put(metaFormat, []byte(FormatVersion)); err != nil {
		return fmt.Errorf("migrate receipt log %s: %w", l.path, err)
	}
	l.log.WithFields(logrus.Fields{fieldSeq: n, "from": formatV1, "to": FormatVersion}).Info("migrated receipt log format")
	return nil
}

// loadState finds the tail: the last receipt, the last checkpoint (whose
// signature and chain root are checked against the stored frontier), and
// the leaves of the receipts after it.
func (l *Log) loadState(tx *bolt.Tx) error {
	meta := tx.Bucket(bktMeta)
	var s chainState
	v := meta.Get(metaLastSeq)
	if len(v) != 8 {
		return fmt.Errorf("open receipt log %s: header has no last_seq: %w", l.path, ErrCorrupt)
	}
	s.lastSeq = getU64(v)
	var lastKey uint64
	if k, _ := tx.Bucket(bktReceipts).Cursor().Last(); k != nil {
		lastKey = getU64(k)
	}
	if lastKey != s.lastSeq {
		return fmt.Errorf("open receipt log %s: header says the last receipt is seq %d but the last stored is seq %d (receipts removed or added outside the log); refusing to write: %w",
			l.path, s.lastSeq, lastKey, ErrTampered)
	}
	if fb := meta.Get(metaChain); fb != nil {
		f, err := unmarshalFrontier(fb)
		if err != nil {
			return fmt.Errorf("open receipt log %s: %v: %w", l.path, err, ErrCorrupt)
		}
		s.chain = f
	}
	s.pendingStart = 1
	if k, data := tx.Bucket(bktCheckpoints).Cursor().Last(); k != nil {
		cp, err := parseCheckpoint(data)
		if err != nil {
			return fmt.Errorf("open receipt log %s: last checkpoint %d: %v: %w", l.path, getU64(k), err, ErrTampered)
		}
		if err := cp.VerifySignature(); err != nil {
			return fmt.Errorf("open receipt log %s: last checkpoint %d: %v: %w", l.path, getU64(k), err, ErrTampered)
		}
		if cp.Body.CheckpointSeq != getU64(k) || s.chain.n != cp.Body.CheckpointSeq ||
			s.chain.root().String() != cp.Body.ChainRoot {
			return fmt.Errorf("open receipt log %s: last checkpoint %d does not match the stored chain: %w", l.path, getU64(k), ErrTampered)
		}
		if cp.Body.BatchEndSeq > s.lastSeq {
			return fmt.Errorf("open receipt log %s: last checkpoint %d covers up to seq %d past the last receipt %d: %w",
				l.path, cp.Body.CheckpointSeq, cp.Body.BatchEndSeq, s.lastSeq, ErrTampered)
		}
		s.cpSeq = cp.Body.CheckpointSeq
		s.prevSHA, err = cp.Body.BodySHA256()
		if err != nil {
			return err
		}
		s.pendingStart = cp.Body.BatchEndSeq + 1
	} else if s.chain.n != 0 {
		return fmt.Errorf("open receipt log %s: chain frontier names %d checkpoints but none is stored: %w", l.path, s.chain.n, ErrTampered)
	}
	c := tx.Bucket(bktReceipts).Cursor()
	want := s.pendingStart
	for k, data := c.Seek(u64key(s.pendingStart)); k != nil; k, data = c.Next() {
		if getU64(k) != want {
			return fmt.Errorf("open receipt log %s: receipt seq %d missing from the unsealed tail: %w", l.path, want, ErrTampered)
		}
		s.pending = append(s.pending, LeafHash(data))
		want++
	}
	if len(s.pending) > 0 {
		s.pendingSince = l.opts.Now()
	}
	l.st = s
	return nil
}

// Recovery reports what Open found: the tail, unsealed receipts, receipts
// lost in a crash, a key rotation.
func (l *Log) Recovery() Recovery { return l.recovery }

// Path is the database file.
func (l *Log) Path() string { return l.path }

// Mode returns the log's durability mode.
func (l *Log) Mode() Mode { return l.opts.Mode }

// KernelKey is the public key (hex) this log signs with; "" when read-only.
func (l *Log) KernelKey() string { return l.pubHex }

// LastSeq is the last durable sequence number (writable logs only).
func (l *Log) LastSeq() uint64 { return l.durable.Load() }

// Package collect consumes the sealed batches nodes ship to NATS JetStream
// into one central store, acting as a witness (docs/receipt-log.md,
// "Collecting centrally").
//
// A Collector pulls from a durable consumer on the stream (every log's
// subject, or the subjects its filter names), decodes each message as a
// receipts.SealedBatch and hands it to central.Store. A message is acked
// only after the store's transaction committed, or after a refused batch
// was kept aside (a refused batch is evidence, not a retry loop); a message
// that is no sealed batch is kept aside too. A batch that arrives before its
// predecessor is stored (a redelivery after a crash, or two collectors
// sharing the durable) is put back with a delay rather than refused as a
// gap, until its predecessor is stored or GapWait has passed, after which
// the store keeps it aside as a gap (and stores it still, should the
// predecessor come later). Fetching and checking signatures overlap the
// store's commits, and every batch fetched during a commit goes into the
// next transaction (Run).
package collect

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
	"github.com/backbay-labs/chio-agent/receipts/ship"
)

// Defaults (docs/receipt-log.md, "Collecting centrally").
const (
	DefaultDurable  = "chio-collector"
	DefaultFetch    = 64
	DefaultAckWait  = 30 * time.Second
	DefaultGapDelay = time.Second
	// DefaultGapWait is how long a batch whose predecessor is not stored
	// is put back before it is kept aside as a gap: longer than AckWait, so
	// that a predecessor held by a crashed collector is redelivered first.
	DefaultGapWait = 2 * time.Minute
	DefaultReport  = 10 * time.Second
)

// Options configure a Collector.
type Options struct {
	// Servers are the cluster's URLs (nats:// or tls://host:port).
	Servers []string
	// Credentials and CAFile as the shipper takes them; Lookup reads the
	// environment (default os.LookupEnv).
	Credentials ship.Credentials
	CAFile      string
	Lookup      func(string) (string, bool)
	// Stream is the JetStream stream. Default ship.DefaultStream.
	Stream string
	// Subject filters what this collector consumes. Default
	// ship.DefaultSubjectPrefix + ".>" (every log).
	Subject string
	// Durable names the consumer. Collectors with one durable name share
	// its messages (they must share one store, see the docs); a second
	// store needs a durable of its own. Default DefaultDurable.
	Durable string
	// Fetch is the most messages pulled at once. Default DefaultFetch.
	Fetch int
	// AckWait is how long a delivered message stays unacked before the
	// server redelivers it. Default DefaultAckWait.
	AckWait time.Duration
	// GapDelay and GapWait bound the wait for a batch's predecessor:
	// redelivered every GapDelay, kept aside as a gap once it has waited
	// GapWait. Defaults DefaultGapDelay, DefaultGapWait.
	GapDelay, GapWait time.Duration
	// Report is how often a progress line is logged. Default DefaultReport.
	Report time.Duration
	// Logger receives progress, rejections and outages. Default discarded.
	Logger logrus.FieldLogger
}

func (o Options) withDefaults() Options {
	if o.Stream == "" {
		o.Stream = ship.DefaultStream
	}
	if o.Subject == "" {
		o.Subject = ship.DefaultSubjectPrefix + ".>"
	}
	if o.Durable == "" {
		o.Durable = DefaultDurable
	}
	if o.Fetch <= 0 {
		o.Fetch = DefaultFetch
	}
	if o.AckWait <= 0 {
		o.AckWait = DefaultAckWait
	}
	if o.GapDelay <= 0 {
		o.GapDelay = DefaultGapDelay
	}
	if o.GapWait <= 0 {
		o.GapWait = DefaultGapWait
	}
	if o.Report <= 0 {
		o.Report = DefaultReport
	}
	if o.Logger == nil {
		l := logrus.New()
		l.Out = io.Discard
		o.Logger = l
	}
	return o
}

// Stats are a collector's counts since start.
type Stats struct {
	// Batches and Receipts stored; Duplicates delivered again and already
	// stored (nothing changed).
	Batches    uint64 `json:"batches"`
	Receipts   uint64 `json:"receipts"`
	Duplicates uint64 `json:"duplicates"`
	// Rejected batches kept aside (Malformed among them: messages that
	// were no sealed batch of the log their subject names).
	Rejected  uint64 `json:"rejected"`
	Malformed uint64 `json:"malformed"`
	// Deferred counts deliveries put back to wait for their predecessor.
	Deferred uint64 `json:"deferred"`
	// Resumed counts batches kept aside as gaps that the store took back
	// and stored once their predecessor came (in Batches too).
	Resumed uint64 `json:"resumed"`

	// Lag is the messages of the consumer's subjects the stream holds past
	// the last one delivered.
	Lag uint64 `json:"lag"`
	// Errors counts failed fetches and commits; LastError the latest.
	Errors    uint64 `json:"errors"`
	LastError string `json:"last_error,omitempty"`
}

// Collector consumes batches into a store.
type Collector struct {
	store *central.Store
	o     Options
	nc    *nats.Conn
	js    jetstream.JetStream

	mu sync.Mutex
	st Stats
}

// New checks opts, loads the credentials and connects. Servers that refuse
// the credentials stop it, with what the client can tell of why (for a
// .creds file: an expired user JWT, a seed that is not the JWT's user, or
// the user and account to look up in the server's log); servers not
// reachable yet do not (Run retries).
func New(store *central.Store, opts Options) (*Collector, error) {
	o := opts.withDefaults()
	if err := ship.CheckServers(o.Servers); err != nil {
		return nil, err
	}
	auth, err := ship.ClientOptions(o.Credentials, o.CAFile, o.Lookup)
	if err != nil {
		return nil, err
	}
	c := &Collector{store: store, o: o}
	copts := append([]nats.Option{
		nats.Name("chio-agent receipt collector " + o.Durable),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				c.fail("nats disconnected", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { o.Logger.Info("receipt collector reconnected") }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { c.fail("nats", err) }),
	}, auth...)
	url := strings.Join(o.Servers, ",")
	// A first attempt tells refused credentials (which stop the collector,
	// named as well as the client can) from servers not up yet (retried).
	nc, err := nats.Connect(url, copts...)
	if err != nil && ship.IsAuthError(err) {
		lookup := o.Lookup
		if lookup == nil {
			lookup = os.LookupEnv
		}
		return nil, fmt.Errorf("connect receipt stream %s: %w", url, ship.Refused(o.Credentials, lookup, time.Now(), err))
	}
	if err != nil {
		o.Logger.WithError(err).Warn("receipt stream unreachable at start; retrying")
		nc, err = nats.Connect(url, append(copts, nats.RetryOnFailedConnect(true))...)
	}
	if err != nil {
		return nil, fmt.Errorf("connect receipt stream %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("connect receipt stream %s: %w", url, err)
	}
	c.nc, c.js = nc, js
	return c, nil
}

// Close disconnects.
func (c *Collector) Close() { c.nc.Close() }

// Stats are the counts so far.
func (c *Collector) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

func (c *Collector) fail(what string, err error) {
	c.mu.Lock()
	c.st.Errors++
	c.st.LastError = what + ": " + err.Error()
	c.mu.Unlock()
	c.o.Logger.WithError(err).Warn(what)
}

func (c *Collector) add(f func(*Stats)) {
	c.mu.Lock()
	f(&c.st)
	c.mu.Unlock()
}

// consumer creates (or updates) the durable consumer, waiting for the
// stream to exist (a collector may start before any node ships).
func (c *Collector) consumer(ctx context.Context) (jetstream.Consumer, error) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cons, err := c.js.CreateOrUpdateConsumer(cctx, c.o.Stream, jetstream.ConsumerConfig{
			Durable:       c.o.Durable,
			Description:   "chio-agent receipt collector",
			FilterSubject: c.o.Subject,
			DeliverPolicy: jetstream.DeliverAllPolicy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       c.o.AckWait,
			MaxDeliver:    -1,
		})
		cancel()
		if err == nil {
			return cons, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		c.fail("create consumer "+c.o.Durable+" on stream "+c.o.Stream, err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Run collects until ctx ends; it returns nil then. Failed fetches or
// commits are logged and retried (the messages are redelivered).
//
// Fetching and checking run apart from storing: while one group of batches
// is committed (its fsync), the next is fetched and its signatures checked
// on every core (central.CheckAll), so that the store's write lock is held
// only for continuity checks and writes; groups waiting for the commit are
// committed together, one transaction for all.
func (c *Collector) Run(ctx context.Context) error {
	cons, err := c.consumer(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	c.o.Logger.WithField("stream", c.o.Stream).WithField("subject", c.o.Subject).WithField("durable", c.o.Durable).
		Info("collecting sealed receipt batches")
	groups := make(chan []*item, 1)
	stored := make(chan struct{})
	go func() {
		defer close(stored)
		c.store1(groups)
	}()
	c.fetch(ctx, cons, groups)
	close(groups)
	<-stored
	return nil
}

// fetch pulls messages, decodes and checks them, and hands them to store1
// in groups until ctx ends. A pull request asks for Fetch messages and
// stays open up to a second; what it has delivered so far is handed on at
// once rather than when it is complete, so a batch never waits for the
// request's end (store1 merges groups that queue behind a commit).
func (c *Collector) fetch(ctx context.Context, cons jetstream.Consumer, groups chan<- []*item) {
	report := time.NewTicker(c.o.Report)
	defer report.Stop()
	sent := map[string]uint64{} // per log, the last checkpoint handed on checked
	var mb jetstream.MessageBatch
	for ctx.Err() == nil {
		select {
		case <-report.C:
			st := c.Stats()
			c.o.Logger.WithField("batches", st.Batches).WithField("receipts", st.Receipts).
				WithField("duplicates", st.Duplicates).WithField("rejected", st.Rejected).
				WithField("deferred", st.Deferred).WithField("resumed", st.Resumed).WithField("lag", st.Lag).Info("collector progress")
		default:
		}
		var err error
		if mb == nil {
			mb, err = cons.Fetch(c.o.Fetch, jetstream.FetchMaxWait(time.Second))
		}
		var msgs []jetstream.Msg
		if err == nil {
			var open bool
			if msgs, open = c.take(mb); !open {
				if err = mb.Error(); errors.Is(err, nats.ErrTimeout) {
					err = nil
				}
				mb = nil
			}
		}
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
			// Deleted under us (by an operator, or with the stream):
			// create it again; the store makes redelivery harmless.
			c.fail("fetch batches", err)
			if cons, err = c.consumer(ctx); err != nil {
				nakAll(c.decode(msgs))
				return
			}
		} else if err != nil && ctx.Err() == nil {
			c.fail("fetch batches", err)
			if len(msgs) == 0 {
				sleep(ctx, 250*time.Millisecond)
			}
		}
		if len(msgs) == 0 {
			continue
		}
		items := c.decode(msgs)
		if err := c.check(items, sent); err != nil {
			c.fail("read stored heads", err)
			nakAll(items)
			sleep(ctx, 250*time.Millisecond)
			continue
		}
		groups <- items
	}
}

// take waits for mb's next message, then takes the ones already delivered
// behind it (at most Fetch); open is false once mb has delivered all.
func (c *Collector) take(mb jetstream.MessageBatch) (msgs []jetstream.Msg, open bool) {
	ch := mb.Messages()
	m, ok := <-ch
	if !ok {
		return nil, false
	}
	msgs = append(msgs, m)
	for len(msgs) < c.o.Fetch {
		select {
		case m, ok := <-ch:
			if !ok {
				return msgs, false
			}
			msgs = append(msgs, m)
		default:
			return msgs, true
		}
	}
	return msgs, true
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// item is one fetched message on its way.
type item struct {
	m jetstream.Msg
	c *central.Checked
	// malformed: the message is no sealed batch of its subject's log (b
	// holds what is kept aside).
	malformed *receipts.BatchError
	b         receipts.SealedBatch
	done      bool
}

// decode reads each message as a sealed batch, sorted by log and
// checkpoint (the order they can be stored in).
func (c *Collector) decode(msgs []jetstream.Msg) []*item {
	items := make([]*item, 0, len(msgs))
	for _, m := range msgs {
		if meta, err := m.Metadata(); err == nil {
			c.add(func(s *Stats) { s.Lag = meta.NumPending })
		}
		it := &item{m: m}
		if it.malformed = decode(m, &it.b); it.malformed == nil {
			it.c = central.Prepare(it.b)
		}
		items = append(items, it)
	}
	slices.SortStableFunc(items, func(a, b *item) int {
		if a.c == nil || b.c == nil { // malformed first
			return cmp.Compare(boolInt(b.c == nil), boolInt(a.c == nil))
		}
		return cmp.Or(strings.Compare(a.c.LogID(), b.c.LogID()), cmp.Compare(a.c.CheckpointSeq(), b.c.CheckpointSeq()))
	})
	return items
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// check runs the batches' own checks (signatures, ids, Merkle roots) on
// every core, before the store's lock is taken, for the batches that can
// be stored next: those after the stored head and at most one past what
// was handed on already (sent). A batch at or below the head (a duplicate
// or fork) needs none of it, and one further ahead will wait (checked in
// the store if it is ever ingested): checking those on every redelivery
// would only burn the cores.
func (c *Collector) check(items []*item, sent map[string]uint64) error {
	heads, err := c.heads()
	if err != nil {
		return err
	}
	var todo []*central.Checked
	for _, it := range items {
		if it.c == nil {
			continue
		}
		id, n := it.c.LogID(), it.c.CheckpointSeq()
		h := heads[id]
		if sent[id] < h {
			sent[id] = h
		}
		if n > h && n <= sent[id]+1 {
			todo = append(todo, it.c)
			sent[id] = max(sent[id], n)
		}
	}
	central.CheckAll(todo)
	return nil
}

// store1 stores the groups fetch hands on, each with the groups waiting
// behind it in one transaction, until groups is closed (the groups fetched
// before ctx ended are stored too: acked, not left to the ack wait).
func (c *Collector) store1(groups <-chan []*item) {
	for items := range groups {
	more:
		for len(items) < maxGroup {
			select {
			case g, ok := <-groups:
				if !ok {
					break more
				}
				items = append(items, g...)
			default:
				break more
			}
		}
		if err := c.handle(items); err != nil {
			c.fail("store batches", err)
			time.Sleep(250 * time.Millisecond)
		}
	}
}

// maxGroup bounds the messages committed in one transaction.
const maxGroup = 1024

// handle stores a group of messages in one transaction. In the order
// decode sorted them, it ingests each batch whose predecessor is stored
// (in the store or earlier in the group), duplicates and forks, in passes
// until none is left that can be, so a batch refused does not turn its
// successors into gaps; then the batches that waited past GapWait (which
// the store keeps aside as gaps). A refused batch is kept aside in the same
// transaction. After the commit each of these is acked; what still waits
// for its predecessor is put back with a delay. A failed commit puts back
// everything.
func (c *Collector) handle(items []*item) error {
	type outcome struct {
		res central.Result
		err error
	}
	outs := make([]outcome, len(items))
	err := c.store.Update(context.Background(), func(tx *central.Tx) error {
		for i, it := range items {
			it.done = false
			if it.malformed != nil {
				if err := tx.KeepAside(it.b, it.malformed); err != nil {
					return err
				}
				it.done = true
			}
			outs[i] = outcome{}
		}
		ingest := func(i int) error {
			r, err := tx.Ingest(items[i].c)
			if err != nil && asBatchError(err) == nil {
				return err
			}
			items[i].done, outs[i] = true, outcome{r, err}
			return nil
		}
		for progress := true; progress; {
			progress = false
			for i, it := range items {
				if it.done {
					continue
				}
				h, err := tx.Head(it.c.LogID())
				if err != nil {
					return err
				}
				if it.c.CheckpointSeq() > h+1 {
					continue // its predecessor may still come
				}
				if err := ingest(i); err != nil {
					return err
				}
				progress = true
			}
		}
		for i, it := range items {
			if !it.done && c.waitedOut(it.m) {
				if err := ingest(i); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		for _, it := range items {
			it.done = false // rolled back: nothing of it is stored
		}
		nakAll(items)
		return err
	}
	for i, it := range items {
		if !it.done {
			it.m.NakWithDelay(c.o.GapDelay)
			c.add(func(s *Stats) { s.Deferred++ })
			continue
		}
		c.count(it, outs[i].res, outs[i].err)
		it.m.Ack()
	}
	return nil
}

// count logs and counts what the store did with a committed item.
func (c *Collector) count(it *item, res central.Result, err error) {
	if it.malformed != nil {
		c.o.Logger.WithField("subject", it.m.Subject()).WithField("defect", it.malformed.Defect).Warn("kept aside a malformed message: " + it.malformed.Reason)
		c.add(func(s *Stats) { s.Rejected++; s.Malformed++ })
		return
	}
	if refused := asBatchError(err); refused != nil {
		c.o.Logger.WithField("log_id", refused.LogID).WithField("checkpoint_seq", refused.CheckpointSeq).
			WithField("defect", refused.Defect).Warn("kept aside a refused batch: " + refused.Reason)
		c.add(func(s *Stats) { s.Rejected++ })
		return
	}
	if res.Duplicate {
		c.add(func(s *Stats) { s.Duplicates++ })
		return
	}
	c.add(func(s *Stats) { s.Batches++; s.Receipts += uint64(res.Receipts) })
	for _, r := range res.Resumed {
		c.o.Logger.WithField("log_id", r.LogID).WithField("checkpoint_seq", r.CheckpointSeq).
			Info("stored a batch kept aside as a gap: its predecessor is stored now")
		c.add(func(s *Stats) { s.Batches++; s.Receipts += uint64(r.Receipts); s.Resumed++ })
	}
}

func asBatchError(err error) *receipts.BatchError {
	var refused *receipts.BatchError
	if errors.As(err, &refused) {
		return refused
	}
	return nil
}

// waitedOut says m has waited GapWait for its predecessor.
func (c *Collector) waitedOut(m jetstream.Msg) bool {
	meta, err := m.Metadata()
	if err != nil {
		return true
	}
	return time.Duration(meta.NumDelivered)*c.o.GapDelay >= c.o.GapWait
}

// heads are the stored logs' last checkpoint seqs.
func (c *Collector) heads() (map[string]uint64, error) {
	logs, err := c.store.Logs()
	if err != nil {
		return nil, err
	}
	h := make(map[string]uint64, len(logs))
	for _, l := range logs {
		h[l.LogID] = l.Checkpoints
	}
	return h, nil
}

func nakAll(items []*item) {
	for _, it := range items {
		if !it.done {
			it.m.Nak()
		}
	}
}

// decode reads m as a sealed batch of the log its subject names. A message
// that is none comes back as b (the bytes kept as the checkpoint, the
// subject's last token as log id) with why.
func decode(m jetstream.Msg, b *receipts.SealedBatch) *receipts.BatchError {
	subj := m.Subject()
	subjLog := subj[strings.LastIndexByte(subj, '.')+1:]
	if err := json.Unmarshal(m.Data(), b); err != nil {
		*b = receipts.SealedBatch{LogID: subjLog, Checkpoint: json.RawMessage(m.Data())}
		return &receipts.BatchError{Defect: receipts.DefectMalformed, LogID: subjLog,
			Reason: fmt.Sprintf("message on %s is not a sealed batch: %v", subj, err)}
	}
	if b.LogID != subjLog {
		return &receipts.BatchError{Defect: receipts.DefectMalformed, LogID: b.LogID,
			Reason: fmt.Sprintf("batch of log %q published on subject %s (another log's)", b.LogID, subj)}
	}
	return nil
}

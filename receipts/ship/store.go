package ship

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/sink"
)

// DefaultStoreTimeout bounds one Put to a Store sink (Options.AckTimeout's
// default there): a batch is a few requests, each retried by the cloud
// SDK on throttling.
const DefaultStoreTimeout = 30 * time.Second

// newStore makes a shipper whose sink is a Store (o.Store, else the one
// o.StoreURL names, opened here). The NATS options must be unset: one sink
// per shipper.
func newStore(l *receipts.Log, o Options) (*Shipper, error) {
	if len(o.Servers) > 0 || o.Credentials.count() > 0 || o.CAFile != "" {
		return nil, errors.New("check shipping options: a Store sink takes no NATS servers, credentials or CA file")
	}
	st := o.Store
	if st == nil {
		var err error
		if st, err = sink.OpenWith(context.Background(), o.StoreURL, sink.OpenOptions{CreateTable: o.CreateTable}); err != nil {
			return nil, err
		}
	}
	s, err := newShipper(l, o, st, Status{Servers: []string{st.String()}})
	if err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

// put puts b to the Store in the background; its result comes on f.put.
// A Put past AckTimeout fails (and is retried from the mark, idempotent).
func (s *Shipper) put(ctx context.Context, b receipts.SealedBatch, f *flight) {
	f.put = make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, s.o.AckTimeout)
		defer cancel()
		err := s.store.Put(ctx, b, f.cpSeq)
		if err != nil && !strings.Contains(err.Error(), s.store.String()) {
			err = fmt.Errorf("put to %s: %w", s.store, err)
		}
		f.put <- err
	}()
}

// resumeStore checks the mark against the Store, which wins over the state
// file as a stream does: it asks which checkpoints past the mark the
// Store holds, advances the mark over those that follow it without a
// hole, and returns the rest (past a hole) as held, not to be put again.
func (s *Shipper) resumeStore(ctx context.Context) (held map[uint64]uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.o.AckTimeout)
	defer cancel()
	s.mu.Lock()
	mark := s.st.AckedCheckpoint
	s.mu.Unlock()
	seqs, err := s.store.Stored(ctx, s.logID, mark)
	s.mu.Lock()
	s.st.Connected = err == nil
	s.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("read what %s holds of log %s: %w", s.store, s.logID, err)
	}
	held = map[uint64]uint64{}
	for _, cp := range seqs {
		if cp > mark {
			held[cp] = 0
		}
	}
	mark, _ = advanceMark(mark, 0, held)
	s.mu.Lock()
	s.st.AckedCheckpoint, s.markSeq = mark, 0
	s.mu.Unlock()
	return held, s.setAckedSeq(mark)
}

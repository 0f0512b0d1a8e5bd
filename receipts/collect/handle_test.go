package collect

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	bolt "go.etcd.io/bbolt"

	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
)

// fakeMsg is a delivered message that records what the collector answered.
type fakeMsg struct {
	jetstream.Msg
	subject string
	data    []byte
	answer  string
}

func (m *fakeMsg) Subject() string { return m.subject }
func (m *fakeMsg) Data() []byte    { return m.data }
func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{NumDelivered: 1}, nil
}
func (m *fakeMsg) Ack() error { m.answer = "ack"; return nil }
func (m *fakeMsg) Nak() error { m.answer = "nak"; return nil }
func (m *fakeMsg) NakWithDelay(time.Duration) error {
	m.answer = "nak"
	return nil
}

// TestFailedCommitPutsEveryMessageBack: a group whose transaction fails
// (here a log whose stored head is damaged) stores nothing, and every
// message of it is put back at once, also those ingested in the
// transaction before the failure (none left to the ack wait, none acked).
func TestFailedCommitPutsEveryMessageBack(t *testing.T) {
	ka, kb := testKey(t.Name()+"a"), testKey(t.Name()+"b")
	la, lb := openLog(t, ka, 10, 20), openLog(t, kb, 10, 20)
	ba, bb := batchesOf(t, la), batchesOf(t, lb)
	if ba[0].LogID > bb[0].LogID { // the good log's batch goes first
		ba, bb = bb, ba
	}
	path := filepath.Join(t.TempDir(), "central.db")
	s, err := central.Open(path, central.Options{TrustedKeys: []string{la.KernelKey(), lb.KernelKey()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ingest(t.Context(), bb[0]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("logs")).Bucket([]byte(bb[0].LogID)).Put([]byte("head"), []byte("{"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	store := openStore(t, path, la.KernelKey(), lb.KernelKey())
	c := &Collector{store: store, o: Options{}.withDefaults()}
	var msgs []*fakeMsg
	var items []*item
	for _, b := range []receipts.SealedBatch{ba[0], bb[1]} {
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		m := &fakeMsg{subject: "chio.receipts." + b.LogID, data: data}
		msgs = append(msgs, m)
		items = append(items, c.decode([]jetstream.Msg{m})...)
	}
	if err := c.handle(items); err == nil {
		t.Fatal("a transaction reading a damaged head committed")
	}
	for i, m := range msgs {
		if m.answer != "nak" {
			t.Fatalf("message %d answered %q after a failed commit, want nak", i, m.answer)
		}
	}
	err = store.Scan(t.Context(), ba[0].LogID, receipts.Filter{}, func(central.Entry) error { return nil })
	if !errors.Is(err, receipts.ErrNotFound) {
		t.Fatalf("the good log after a failed transaction: %v, want none stored", err)
	}
}

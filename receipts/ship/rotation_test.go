package ship

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/backbay-labs/chio-agent/receipts"
)

// TestEncodeCarriesRotation: the first batch a rotated key signs carries
// the key rotation statement in the message, as json.Marshal of the
// SealedBatch would write it; the other batches are unchanged. (No
// servers: this is the message body alone.)
func TestEncodeCarriesRotation(t *testing.T) {
	k1, k2 := testKey(t.Name()+"/old"), testKey(t.Name()+"/new")
	path := tempLog(t)
	l := openLog(t, path, k1, 10)
	appendN(t, l, k1, 0, 15)
	l.Close()
	l, err := receipts.Open(path, receipts.Options{Key: k2, RotateKey: true, PreviousKey: k1, CheckpointEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	appendN(t, l, k2, 100, 10)
	sealAll(t, l)
	s := &Shipper{}
	var withRotation int
	if err := l.SealedBatches(context.Background(), 0, func(b receipts.SealedBatch) error {
		want, _ := json.Marshal(b)
		if got := s.encode(b); string(got) != string(want) {
			t.Fatalf("encoded batch differs from json.Marshal:\n%s\n%s", got, want)
		}
		if len(b.Rotations) > 0 {
			withRotation++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if withRotation != 1 {
		t.Fatalf("%d batches carry a rotation statement, want 1", withRotation)
	}
}

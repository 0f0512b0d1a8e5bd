package receipts

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A damaged log is opened by every reader and writer without a crash, the
// error names what is wrong and where, and a failed open leaves the file's
// bytes as they were. These tests damage real logs as a disk, a careless
// copy or an attacker would: truncation, garbage pages, flipped bytes.

// damageKey signs the template log.
var damageKey = testKey("damage")

// damageTemplate is a real log of 35 receipts, checkpoints every 10 (so
// receipts 31-35 are an unsealed tail), cut to its high-water mark the way
// Snapshot writes a copy, so that every page of the file is in use or free
// and a truncation anywhere cuts pages the log needs. Built once per process.
var damageTemplate = sync.OnceValues(func() ([]byte, error) {
	dir, err := os.MkdirTemp("", "receipts-damage-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "t.db")
	l, err := Open(path, Options{Key: damageKey, CheckpointEvery: 10, Now: func() time.Time { return fixedNow }})
	if err != nil {
		return nil, err
	}
	for i := 0; i < 35; i++ {
		b, err := SyntheticReceipt(damageKey, i, fixedNow.Add(time.Duration(i)*time.Second))
		if err != nil {
			return nil, err
		}
		if _, err := l.Append(context.Background(), b); err != nil {
			return nil, err
		}
		if i == 29 {
			if err := l.Flush(context.Background(), true); err != nil {
				return nil, err
			}
		}
	}
	l.crashOnClose = true // leave 31-35 unsealed
	if err := l.Close(); err != nil {
		return nil, err
	}
	var snap bytes.Buffer
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer ro.Close()
	if _, err := ro.Snapshot(&snap); err != nil {
		return nil, err
	}
	return snap.Bytes(), nil
})

// damageOriginal is what the template holds: every receipt and checkpoint.
type damageOriginal struct {
	receipts    map[uint64][]byte
	checkpoints map[uint64]Checkpoint
	pageSize    int
}

var damageOrig = sync.OnceValues(func() (*damageOriginal, error) {
	tmpl, err := damageTemplate()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "receipts-damage-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "t.db")
	if err := os.WriteFile(path, tmpl, 0o600); err != nil {
		return nil, err
	}
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer ro.Close()
	if _, err := ro.Verify(context.Background(), VerifyOptions{}); err != nil {
		return nil, err
	}
	o := &damageOriginal{receipts: map[uint64][]byte{}, checkpoints: map[uint64]Checkpoint{}, pageSize: int(decodeMeta(tmpl, 0).pageSize)}
	for seq := uint64(1); seq <= 35; seq++ {
		e, err := ro.Get(seq)
		if err != nil {
			return nil, err
		}
		o.receipts[seq] = e.Receipt
	}
	for cp := uint64(1); cp <= 3; cp++ {
		if o.checkpoints[cp], err = ro.Checkpoint(cp); err != nil {
			return nil, err
		}
	}
	return o, nil
})

func template(t testing.TB) ([]byte, *damageOriginal) {
	t.Helper()
	tmpl, err := damageTemplate()
	if err != nil {
		t.Fatal(err)
	}
	orig, err := damageOrig()
	if err != nil {
		t.Fatal(err)
	}
	return tmpl, orig
}

// damageDir holds the damaged copies; one directory per process, not one
// per test, because the fuzzer makes thousands.
var (
	damageDir = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "receipts-damaged-") })
	damageN   atomic.Uint64
)

func writeDamaged(t testing.TB, data []byte) string {
	t.Helper()
	dir, err := damageDir()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fmt.Sprintf("%d.db", damageN.Add(1)))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(path)
		os.Remove(path + ".accepted")
	})
	return path
}

func fileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// wantTyped fails unless err says which kind of damage it is.
func wantTyped(t testing.TB, what string, err error) {
	t.Helper()
	for _, s := range []error{ErrCorrupt, ErrTampered, ErrFormat, ErrKeyMismatch} {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("%s: error does not say what is damaged: %v", what, err)
}

// openDamaged opens path as every reader and writer does and checks the
// invariants: no crash (a panic or fault fails the test process), a typed
// error or a working log, the file unchanged by a read-only open and by a
// failed writable open, and a writable open only of a log whose receipts
// and checkpoints are all still the original ones. It reports whether the
// writable open was refused.
func openDamaged(t testing.TB, path string, orig *damageOriginal) bool {
	t.Helper()
	before := fileSum(t, path)
	ro, err := Open(path, Options{ReadOnly: true, LockTimeout: time.Second})
	if err != nil {
		wantTyped(t, "read-only open", err)
	} else {
		if _, err := ro.Verify(context.Background(), VerifyOptions{}); err != nil {
			wantTyped(t, "verify", err)
		}
		if _, err := ro.Stats(); err != nil {
			wantTyped(t, "stats", err)
		}
		ro.Close()
	}
	if fileSum(t, path) != before {
		t.Fatal("a read-only open changed the file")
	}
	l, err := Open(path, Options{Key: damageKey, LockTimeout: time.Second})
	if err != nil {
		wantTyped(t, "writable open", err)
		if fileSum(t, path) != before {
			t.Fatalf("a failed writable open changed the file (%v)", err)
		}
		return true
	}
	l.crashOnClose = true // no seal on Close: nothing to write, and faster
	defer l.Close()
	for seq, want := range orig.receipts {
		e, err := l.Get(seq)
		if err != nil || !bytes.Equal(e.Receipt, want) {
			t.Fatalf("writable open accepted a log whose receipt seq %d changed (%v)", seq, err)
		}
	}
	for n, want := range orig.checkpoints {
		cp, err := l.Checkpoint(n)
		if err != nil || cp.Signature != want.Signature || cp.Body != want.Body {
			t.Fatalf("writable open accepted a log whose checkpoint %d changed (%v)", n, err)
		}
	}
	// A log the checks let through can be written (bbolt loads and splits
	// its pages, reuses its free ones, and commits), or refuses the write
	// saying what is damaged; it never hangs or crashes.
	b, err := SyntheticReceipt(damageKey, 1000, fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(context.Background(), b); err != nil {
		wantTyped(t, "append to a log that opened", err)
		return false
	}
	if err := l.Flush(context.Background(), true); err != nil {
		wantTyped(t, "seal a log that opened", err)
	}
	return false
}

// TestDamageEveryPage truncates the log at every page (at the page and in
// its middle) and overwrites every page with random bytes, then opens it.
func TestDamageEveryPage(t *testing.T) {
	tmpl, orig := template(t)
	ps := orig.pageSize
	pages := len(tmpl) / ps
	seed := rand.Uint64()
	t.Logf("seed %d, %d pages", seed, pages)
	rng := rand.New(rand.NewPCG(seed, 0))
	refused := 0
	for p := 0; p < pages; p++ {
		for _, cut := range []int{p * ps, p*ps + ps/2} {
			if !openDamaged(t, writeDamaged(t, tmpl[:cut]), orig) {
				t.Fatalf("truncated to %d of %d bytes: writable open accepted it", cut, len(tmpl))
			}
		}
		data := bytes.Clone(tmpl)
		for i := p * ps; i < (p+1)*ps; i++ {
			data[i] = byte(rng.Uint32())
		}
		if openDamaged(t, writeDamaged(t, data), orig) {
			refused++
		}
	}
	t.Logf("random pages refused: %d of %d", refused, pages)
}

// TestDamageTruncatedToHalf: the first finding: half a log made readers and
// writers die of SIGBUS.
func TestDamageTruncatedToHalf(t *testing.T) {
	tmpl, orig := template(t)
	path := writeDamaged(t, tmpl[:len(tmpl)/2])
	for _, o := range []Options{{ReadOnly: true}, {Key: damageKey}} {
		_, err := Open(path, o)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "truncated") || !strings.Contains(err.Error(), path) {
			t.Fatalf("open (read-only %v) of a log cut in half: %v", o.ReadOnly, err)
		}
		t.Logf("%v", err)
	}
	openDamaged(t, path, orig)
}

// TestDamageRandomPage2: garbage on page 2 made a writable open panic inside
// bbolt's free-page scan.
func TestDamageRandomPage2(t *testing.T) {
	tmpl, orig := template(t)
	data := bytes.Clone(tmpl)
	rng := rand.New(rand.NewPCG(2, 2))
	for i := 2 * orig.pageSize; i < 3*orig.pageSize; i++ {
		data[i] = byte(rng.Uint32())
	}
	path := writeDamaged(t, data)
	_, err := Open(path, Options{Key: damageKey})
	var de *DefectError
	if !errors.As(err, &de) || de.Page != 2 || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("writable open of a log with a random page 2: %v", err)
	}
	t.Logf("%v", err)
	openDamaged(t, path, orig)
}

// flipInFile changes one hex digit of the receipt's signature in the file's
// bytes, as an editor or dd would, leaving the bbolt structure intact. Every
// copy is changed: bbolt's copy-on-write leaves older copies of a page in
// free pages.
func flipInFile(t *testing.T, data []byte, receipt []byte) []byte {
	t.Helper()
	out := bytes.Clone(data)
	n := 0
	for i := 0; ; n++ {
		k := bytes.Index(out[i:], receipt)
		if k < 0 {
			break
		}
		j := i + k + bytes.Index(receipt, []byte(`"signature":"`)) + len(`"signature":"`) + 7
		if out[j] == 'a' {
			out[j] = 'b'
		} else {
			out[j] = 'a'
		}
		i += k + 1
	}
	if n == 0 {
		t.Fatal("receipt not found in the file")
	}
	return out
}

// TestDamageFlippedReceiptByteRefusedForAppend: a log whose receipt bytes
// were flipped was opened and appended to without a word. Now the open for
// append is refused, naming the receipt, both for a receipt sealed long ago
// (found through its batch's Merkle root) and for one in the unsealed tail.
func TestDamageFlippedReceiptByteRefusedForAppend(t *testing.T) {
	tmpl, orig := template(t)
	for _, seq := range []uint64{15, 27, 33} {
		path := writeDamaged(t, flipInFile(t, tmpl, orig.receipts[seq]))
		before := fileSum(t, path)
		_, err := Open(path, Options{Key: damageKey})
		var de *DefectError
		if !errors.As(err, &de) || de.Seq != seq || !errors.Is(err, ErrTampered) {
			t.Fatalf("seq %d flipped: writable open: %v", seq, err)
		}
		t.Logf("%v", err)
		if fileSum(t, path) != before {
			t.Fatal("the refused open changed the file")
		}
		if !openDamaged(t, path, orig) {
			t.Fatal("writable open accepted a flipped receipt")
		}
	}
}

// FuzzDamagedLog damages the template log at a page and offset the fuzzer
// picks (overwriting bytes, or truncating) and opens it: never a crash, a
// typed error or an intact log, a failed open never changes the file.
func FuzzDamagedLog(f *testing.F) {
	f.Add(uint16(2), uint16(0), []byte("garbage"), false)
	f.Add(uint16(0), uint16(16), []byte{0xff}, false)
	f.Add(uint16(1), uint16(60), []byte{1, 2, 3, 4, 5, 6, 7, 8}, false)
	f.Add(uint16(5), uint16(100), []byte{0}, true)
	f.Add(uint16(7), uint16(30), []byte{0xff, 0xff, 0xff, 0xff}, false)
	f.Fuzz(func(t *testing.T, page, offset uint16, patch []byte, truncate bool) {
		tmpl, orig := template(t)
		ps := orig.pageSize
		at := (int(page)%(len(tmpl)/ps))*ps + int(offset)%ps
		var data []byte
		if truncate {
			data = tmpl[:at]
		} else {
			data = bytes.Clone(tmpl)
			copy(data[at:], patch)
		}
		openDamaged(t, writeDamaged(t, data), orig)
	})
}

// TestPanicInBboltLeavesTheLogRefusing: a panic inside a bbolt transaction
// (bbolt panics on a damaged page it meets while writing, and does not
// release its locks when it does) is turned into ErrCorrupt, and from then
// on every read, write and Close returns that error at once rather than
// waiting on a lock bbolt may still hold.
func TestPanicInBboltLeavesTheLogRefusing(t *testing.T) {
	tmpl, _ := template(t)
	path := writeDamaged(t, bytes.Clone(tmpl))
	l, err := Open(path, Options{Key: damageKey, LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = l.update(func(*bolt.Tx) error { panic("damaged page") })
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("panic inside update: %v; want ErrCorrupt", err)
	}
	b, err := SyntheticReceipt(damageKey, 1000, fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 3)
	go func() {
		_, err := l.Append(context.Background(), b)
		done <- err
		_, err = l.Get(1)
		done <- err
		done <- l.Close()
	}()
	for _, what := range []string{"append", "get", "close"} {
		select {
		case err := <-done:
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s after the panic: %v; want ErrCorrupt", what, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s after the panic did not return", what)
		}
	}
}

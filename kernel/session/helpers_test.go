package session

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

const testPolicy = `hushspec: "0.1.0"
rules:
  tool_access:
    allow: [read, write]
    default: block
`

// clock is a settable clock shared by the kernel and the journal.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// harness is a kernel and a journal in a temporary directory, with the
// receipts it prepared kept by id (a stand-in for the receipt log).
type harness struct {
	t     testing.TB
	k     *kernel.Kernel
	key   ed25519.PrivateKey
	j     *Journal
	path  string
	clock *clock
	opts  Options

	mu       sync.Mutex
	receipts map[string][]byte
	// tampered skips the final verification (tamper tests break it).
	tampered bool
}

func newHarness(t testing.TB, l Limits) *harness {
	t.Helper()
	p, err := hushspec.Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(nil)
	h := &harness{t: t, key: key, clock: newClock(), path: filepath.Join(t.TempDir(), "s.sessions.db"), receipts: map[string][]byte{}}
	h.k, err = kernel.New(kernel.Options{Policy: p, SigningKey: key, Clock: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	h.opts = Options{Limits: l, Now: h.clock.Now}
	h.reopen()
	t.Cleanup(func() {
		if h.j != nil {
			h.j.Close()
			h.j = nil
		}
		if h.tampered {
			return
		}
		// Every journal a test leaves must verify, bound to its receipts.
		ro, err := Open(h.path, Options{ReadOnly: true})
		if err != nil {
			t.Errorf("reopen read-only: %v", err)
			return
		}
		defer ro.Close()
		rep, err := ro.Verify(context.Background(), "", h.lookup)
		if err != nil || !rep.OK() {
			t.Errorf("journal does not verify: %v %+v", err, rep.Problems)
		}
	})
	return h
}

func (h *harness) reopen() {
	h.t.Helper()
	if h.j != nil {
		if err := h.j.Close(); err != nil {
			h.t.Fatal(err)
		}
	}
	j, err := Open(h.path, h.opts)
	if err != nil {
		h.t.Fatal(err)
	}
	h.j = j
}

func (h *harness) lookup(id string) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	b, ok := h.receipts[id]
	if !ok {
		return nil, fmt.Errorf("no receipt %s", id)
	}
	return b, nil
}

// call makes one call of a session through the kernel; it waits for the
// entry to be durable and returns the outcome, the signed receipt and the
// Call (to settle).
func (h *harness) call(session, tool string, reqBytes int64) (kernel.Outcome, kernel.Receipt, *Call) {
	h.t.Helper()
	c := h.j.Call(Request{SessionID: session, ToolServer: "srv", ToolName: tool, RequestBytes: reqBytes, MaxBody: 1 << 20})
	out, r, err := h.k.EvaluateToolCall(context.Background(), kernel.ToolCall{ToolServer: "srv", ToolName: tool, Guard: c, RequestID: newID()})
	if err != nil {
		h.t.Errorf("evaluate: %v", err)
		return out, r, c
	}
	if err := c.Durable(context.Background()); err != nil {
		h.t.Errorf("durable: %v", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		h.t.Fatal(err)
	}
	h.mu.Lock()
	h.receipts[r.ID] = b
	h.mu.Unlock()
	return out, r, c
}

var idSeq atomic.Uint64

func newID() string { return fmt.Sprintf("req-%d", idSeq.Add(1)) }

// sessionMeta decodes a receipt's metadata.session.
func sessionMeta(t testing.TB, r kernel.Receipt) map[string]any {
	t.Helper()
	var m struct {
		Session map[string]any `json:"session"`
	}
	if err := json.Unmarshal(r.Metadata, &m); err != nil {
		t.Fatal(err)
	}
	return m.Session
}

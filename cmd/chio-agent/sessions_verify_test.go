package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/kernel/session"
	"github.com/backbay-labs/chio-agent/receipts"
)

// testReplica is one sidecar replica's files, written in process: its
// receipt log NAME.db and journal NAME.sessions.db in one directory.
type testReplica struct {
	t   *testing.T
	k   *kernel.Kernel
	l   *receipts.Log
	j   *session.Journal
	db  string
	n   int
	dir string
}

func newTestReplica(t *testing.T, dir, name, self string) *testReplica {
	t.Helper()
	p, err := hushspec.Parse([]byte("hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    allow: [getPet]\n    default: block\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := &testReplica{t: t, db: filepath.Join(dir, name+".db"), dir: dir}
	if r.k, err = kernel.New(kernel.Options{Policy: p, SigningKey: cliKey()}); err != nil {
		t.Fatal(err)
	}
	if r.l, err = receipts.Open(r.db, receipts.Options{Key: cliKey()}); err != nil {
		t.Fatal(err)
	}
	if r.j, err = session.Open(session.DefaultPath(r.db), session.Options{Self: self, Limits: session.Limits{MaxCalls: 5}}); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *testReplica) calls(sid string, n int) {
	for range n {
		r.n++
		logCall(r.t, r.k, r.l, r.j, sid, "getPet", fmt.Sprintf("%s-%d", r.db, r.n))
	}
}

func (r *testReplica) journal() string { return session.DefaultPath(r.db) }

func (r *testReplica) close() {
	if err := r.j.Close(); err != nil {
		r.t.Fatal(err)
	}
	if err := r.l.Close(); err != nil {
		r.t.Fatal(err)
	}
}

// moveTo seals session sid on r for to, which continues it.
func (r *testReplica) moveTo(sid string, to *testReplica, self string) {
	r.t.Helper()
	tr, err := r.j.Seal(context.Background(), sid, self)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := to.j.Continue(context.Background(), sid, tr); err != nil {
		r.t.Fatal(err)
	}
}

// TestSessionsVerifyReplicas: sessions verify over several replicas'
// journals (each with its receipt log) stitches each session across them:
// a session that moved from a to b verifies with its link resolved; with
// a's journal left out the link is unresolved (exit 2, or 0 with
// --partial); an unlinked segment is reported (exit 2 with
// --fail-unlinked); two takers of one handover are a fork; bad command
// lines name what is wrong.
func TestSessionsVerifyReplicas(t *testing.T) {
	for _, n := range config.SessionEnv {
		t.Setenv(n, "")
	}
	t.Setenv(config.EnvKernelConfigPath, "")
	t.Setenv(config.EnvReceiptSink, "")
	ctx := context.Background()
	dir := t.TempDir()
	a, b, c := newTestReplica(t, dir, "a", "a:1"), newTestReplica(t, dir, "b", "b:1"), newTestReplica(t, t.TempDir(), "c", "c:1")
	for _, s := range []struct {
		r  *testReplica
		id string
	}{{a, "moved"}, {b, "stays"}, {c, "elsewhere"}} {
		if err := s.r.j.Start(ctx, s.id, session.LinkNew); err != nil {
			t.Fatal(err)
		}
	}
	a.calls("moved", 2)
	a.moveTo("moved", b, "b:1")
	b.calls("moved", 1)
	b.calls("stays", 1)
	c.calls("elsewhere", 1)
	for _, r := range []*testReplica{a, b, c} {
		r.close()
	}

	verify := func(wantCode int, want []string, args ...string) string {
		t.Helper()
		out, err := runCLI(t, append([]string{"sessions", "verify"}, args...)...)
		code := 0
		if err != nil {
			code = exitCode(err)
		}
		if code != wantCode {
			t.Fatalf("verify %v: exit %d (%v), want %d\n%s", args, code, err, wantCode, out)
		}
		for _, w := range want {
			if !strings.Contains(out+fmt.Sprint(err), w) {
				t.Fatalf("verify %v: no %q in\n%s\n%v", args, w, out, err)
			}
		}
		return out
	}
	ok := "stitched 2 sessions over 2 journals: 3 runs; segments 2 new, 1 linked (1 resolved to another journal's handover), 0 unlinked; 0 forks, 0 broken, 0 unresolved"
	verify(0, []string{"ok: " + a.journal() + ": 1 sessions", "2 receipts name their entries", ok}, "--receipts", a.db, "--receipts", b.db)
	verify(0, []string{ok}, "--journal", dir) // NAME.db beside each NAME.sessions.db
	verify(0, []string{ok, "receipts not checked"}, "--journal", a.journal(), "--journal", b.journal(), "--chain-only")
	out := verify(0, nil, "--receipts", a.db, "--receipts", b.db, "--json", "moved")
	var rep severalReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Stitched.Sessions) != 1 {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if s := rep.Stitched.Sessions[0]; s.Calls != 3 || s.Totals == nil || s.Totals.Calls != 3 || len(s.Runs) != 2 || s.Holders[0] != "b:1" {
		t.Fatalf("session moved: %+v", s)
	}
	// One journal: as before, the links are its own.
	verify(0, []string{"ok: " + b.journal() + ": 2 sessions", "segments: 1 new, 1 linked"}, "--receipts", b.db)

	// a's journal left out: b's link resolves to nothing given.
	unresolved := "UNRESOLVED session moved: " + b.journal() + " entry 7: linked to the handover"
	verify(exitVerifyFailed, []string{unresolved, "1 links unresolved (--partial"}, "--receipts", b.db, "--receipts", c.db)
	verify(0, []string{unresolved}, "--receipts", b.db, "--receipts", c.db, "--partial")

	// c takes "moved" unlinked, as if a and b were down.
	c.reopen(t, "c:1")
	if err := c.j.Start(ctx, "moved", session.LinkUnlinked); err != nil {
		t.Fatal(err)
	}
	c.calls("moved", 1)
	c.close()
	unlinked := "UNLINKED session moved: " + c.journal() + " entry 1: held by c:1 unlinked from nothing"
	verify(0, []string{unlinked}, "--receipts", a.db, "--receipts", b.db, "--receipts", c.db)
	verify(exitVerifyFailed, []string{unlinked, "1 unlinked segments (--fail-unlinked)"}, "--receipts", a.db, "--receipts", b.db, "--receipts", c.db, "--fail-unlinked")

	// A second b:1 takes a's handover of another session too.
	dir2 := t.TempDir()
	a2, b2, b3 := newTestReplica(t, dir2, "a", "a:1"), newTestReplica(t, dir2, "b", "b:1"), newTestReplica(t, dir2, "b-twin", "b:1")
	if err := a2.j.Start(ctx, "twice", session.LinkNew); err != nil {
		t.Fatal(err)
	}
	a2.calls("twice", 1)
	a2.moveTo("twice", b2, "b:1")
	a2.moveTo("twice", b3, "b:1") // sealed for b:1 already: sent again
	b2.calls("twice", 1)
	b3.calls("twice", 1)
	for _, r := range []*testReplica{a2, b2, b3} {
		r.close()
	}
	verify(exitVerifyFailed, []string{"FORK session twice: " + dir2, "a second taker of the handover", "0 broken links or figures and 1 forks"}, "--journal", dir2)

	// Command lines that cannot be run.
	verify(exitUsage, []string{"2 journals and 1 receipt logs"}, "--journal", a.journal(), "--journal", b.journal(), "--receipts", a.db)
	verify(exitUsage, []string{"given twice"}, "--journal", a.journal(), "--journal", filepath.Join(dir, ".", "a.sessions.db"), "--chain-only")
	verify(exitUsage, []string{"no NAME.sessions.db session journal in directory"}, "--journal", t.TempDir(), "--journal", a.journal())
	bare := filepath.Join(t.TempDir(), "j.sessions.db")
	raw, err := os.ReadFile(b.journal())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bare, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	verify(exitUsage, []string{"no receipt log beside session journal " + bare}, "--journal", a.journal(), "--journal", bare)
}

// reopen opens the replica's log and journal again.
func (r *testReplica) reopen(t *testing.T, self string) {
	var err error
	if r.l, err = receipts.Open(r.db, receipts.Options{Key: cliKey()}); err != nil {
		t.Fatal(err)
	}
	if r.j, err = session.Open(r.journal(), session.Options{Self: self, Limits: session.Limits{MaxCalls: 5}}); err != nil {
		t.Fatal(err)
	}
}

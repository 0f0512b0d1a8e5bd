package collect

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/backbay-labs/chio-agent/receipts/ship"
)

// TestCredsOperatorMode: against a nats-server in operator mode (users
// signed by an account the operator signed, JetStream enabled for it by its
// JWT), a shipper and a collector each authenticate with a .creds file of
// their own; the node's batches are collected, the server is killed while
// the node goes on deciding and started again, and the backlog ships and is
// collected: every batch once in the stream and in the store.
func TestCredsOperatorMode(t *testing.T) {
	s := startOpServer(t)
	key := testKey(t.Name())
	l := openLog(t, key, 10, 0)
	id := logID(t, l)
	const stream, prefix = "CHIO_OP", "chio.receipts"
	sh, err := ship.New(l, ship.Options{Servers: []string{s.URL()}, Credentials: ship.Credentials{CredsFile: s.creds("node", nil)},
		Stream: stream, SubjectPrefix: prefix, Replicas: 1, Poll: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sh.Start()
	t.Cleanup(func() { sh.Stop(time.Second) })
	store := openStore(t, filepath.Join(t.TempDir(), "central.db"), l.KernelKey())
	o := Options{Servers: []string{s.URL()}, Credentials: ship.Credentials{CredsFile: s.creds("collector", nil)},
		Stream: stream, Subject: prefix + ".>", Durable: "collector", AckWait: 2 * time.Second, GapDelay: 50 * time.Millisecond}
	col, _ := run(t, store, o)

	appendN(t, l, key, 0, 100)
	waitFor(t, time.Minute, "10 batches stored", func() bool { n, _ := stored(t, store, id); return n == 10 })
	s.stop()
	appendN(t, l, key, 100, 100) // decisions go on; the backlog stays in the log
	s.start()
	waitFor(t, 2*time.Minute, "20 batches stored after the server came back", func() bool { n, _ := stored(t, store, id); return n == 20 })
	if rj := rejections(t, store); len(rj) != 0 {
		t.Fatalf("kept aside %v", rj)
	}
	if rep := verifyStore(t, store); rep.Logs[0].Verified != 200 {
		t.Fatalf("verify report %+v", rep)
	}
	waitFor(t, time.Minute, "the collector counting 20 batches", func() bool { return col.Stats().Batches == 20 })
	// Nothing published twice: the stream holds each checkpoint once.
	nc, err := s.connect(s.creds("reader", nil))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 20 {
		t.Fatalf("stream holds %d messages, want 20 (one per checkpoint)", info.State.Msgs)
	}
}

// TestCredsRefusedNamingCause: users the operator-mode server refuses (a
// JWT past its expiry, a user the account revokes, a user of an account the
// server does not know, a creds file whose seed is not the JWT's user) stop
// the shipper and the collector at start with an error saying the servers
// refuse them and naming what the file shows of why.
func TestCredsRefusedNamingCause(t *testing.T) {
	s := startOpServer(t)
	stranger := mustKey(t, nkeys.CreateAccount)
	unknown, unknownUser := s.user("stranger", stranger, nil)
	other, _ := s.user("other", s.account, nil)
	mismatched := filepath.Join(t.TempDir(), "mismatched.creds")
	mixCreds(t, other, s.creds("victim", nil), mismatched)
	cases := []struct {
		name, creds string
		want        []string
	}{
		{"expired", s.creds("expired", func(uc *jwt.UserClaims) { uc.Expires = time.Now().Add(-time.Hour).Unix() }), []string{`"expired"`, "its JWT expired at"}},
		{"revoked", s.revoked, []string{`"revoked"`, "or it revokes this user"}},
		{"unknown account", unknown, []string{unknownUser, pubOf(t, stranger), "do not know that account"}},
		{"seed of another user", mismatched, []string{"the creds' seed is user", "not the user", `"other"`}},
	}
	key := testKey(t.Name())
	l := openLog(t, key, 10, 10)
	store := openStore(t, filepath.Join(t.TempDir(), "central.db"), l.KernelKey())
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			creds := ship.Credentials{CredsFile: c.creds}
			_, shipErr := ship.New(l, ship.Options{Servers: []string{s.URL()}, Credentials: creds, Replicas: 1})
			col, err := New(store, Options{Servers: []string{s.URL()}, Credentials: creds})
			if err == nil {
				col.Close()
				t.Fatalf("collector with %s creds started", c.name)
			}
			for who, err := range map[string]error{"shipper": shipErr, "collector": err} {
				if err == nil {
					t.Fatalf("%s with %s creds started", who, c.name)
				}
				for _, w := range append([]string{"the servers refuse", "Authorization Violation"}, c.want...) {
					if !strings.Contains(err.Error(), w) {
						t.Fatalf("%s with %s creds: %q does not say %q", who, c.name, err, w)
					}
				}
			}
		})
	}
}

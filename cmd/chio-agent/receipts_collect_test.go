package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/central"
	"github.com/backbay-labs/chio-agent/receipts/collect"
	"github.com/backbay-labs/chio-agent/receipts/receiptstest"
	"github.com/backbay-labs/chio-agent/receipts/ship"
)

// TestReceiptsCollectCLI: two nodes ship into a real three-server cluster
// and `receipts collect` stores both logs side by side in one central
// store, which `receipts verify` then passes; a collector naming no trusted
// key, or no NATS URL, does not start.
func TestReceiptsCollectCLI(t *testing.T) {
	c := natscluster.Start(t)
	t.Setenv("TEST_COLLECT_TOKEN", c.Token)
	store := filepath.Join(t.TempDir(), "central.db")

	var keys []string
	var ids []string
	for _, name := range []string{"node-a", "node-b"} {
		seed := sha256.Sum256([]byte("collect cli " + name))
		key := ed25519.NewKeyFromSeed(seed[:])
		l, err := receipts.Open(filepath.Join(t.TempDir(), name+".db"), receipts.Options{Key: key, Mode: receipts.ModeAsync, CheckpointEvery: 25})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		receiptstest.Append(t, l, key, 0, 250)
		receiptstest.Seal(t, l)
		s, err := ship.New(l, ship.Options{Servers: strings.Split(c.URLs(), ","), Credentials: ship.Credentials{TokenEnv: "TEST_COLLECT_TOKEN"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Drain(context.Background()); err != nil {
			t.Fatal(err)
		}
		s.Close()
		keys = append(keys, l.KernelKey())
		id, _ := l.LogID()
		ids = append(ids, id)
	}

	for _, args := range [][]string{
		{"receipts", "collect", "--from", c.URL(0), "--receipts", store, "--token-env", "TEST_COLLECT_TOKEN"},
		{"receipts", "collect", "--from", "http://127.0.0.1:1", "--receipts", store, "--trusted-key", keys[0]},
	} {
		if out, err := runCLI(t, args...); err == nil {
			t.Fatalf("%v started: %s", args, out)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		root := newRootCommand()
		root.SetArgs([]string{"receipts", "collect", "--from", c.URLs(), "--receipts", store, "--token-env", "TEST_COLLECT_TOKEN",
			"--trusted-key", keys[0], "--trusted-key", keys[1]})
		root.SetOut(&out)
		root.SetErr(&out)
		done <- root.ExecuteContext(ctx)
	}()
	// Done when the durable consumer has every message acknowledged.
	nc, err := c.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	deadline := time.Now().Add(time.Minute)
	for {
		cons, err := js.Consumer(context.Background(), ship.DefaultStream, collect.DefaultDurable)
		if err == nil {
			if ci, err := cons.Info(context.Background()); err == nil && ci.Delivered.Stream == 20 && ci.NumAckPending == 0 && ci.NumPending == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("collector did not acknowledge 20 batches: %v\n%s", err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("collect: %v\n%s", err, out.String())
	}
	vout, err := runCLI(t, "receipts", "verify", "--receipts", store, "--trusted-key", keys[0], "--trusted-key", keys[1])
	if err != nil {
		t.Fatalf("verify the collected store: %v\n%s", err, vout)
	}
	for _, id := range ids {
		if !strings.Contains(vout, id+"  250 receipts") {
			t.Fatalf("verify output lacks log %s with 250 receipts:\n%s", id, vout)
		}
	}
	if strings.Contains(vout, "kept aside") {
		t.Fatalf("batches kept aside:\n%s", vout)
	}
}

// TestCollectorMetricsLoopbackOnly: the collector's metrics are served on
// a loopback address only, and every series is there.
func TestCollectorMetricsLoopbackOnly(t *testing.T) {
	c, err := collect.New(nil, collect.Options{Servers: []string{"nats://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, addr := range []string{"0.0.0.0:0", "example.com:9465", "9465"} {
		if _, _, err := serveCollectorMetrics(addr, c, nil); err == nil {
			t.Fatalf("metrics served on %s", addr)
		}
	}
	_, stop, err := serveCollectorMetrics("127.0.0.1:0", c, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 8 {
		t.Fatalf("%d metric families, want 8", len(mfs))
	}
}

// TestReadCentralStoreHeldByCollector: list and verify on a central store a
// running collector holds say so (a central store, held by a collector)
// and what to do, not a local log's "is chio-agent running?"; the snapshot
// the collector serves reads as the store.
func TestReadCentralStoreHeldByCollector(t *testing.T) {
	db, _, pub := nodeLog(t, "held", "30")
	l, err := receipts.Open(db, receipts.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "central.db")
	s, err := central.Open(path, central.Options{TrustedKeys: []string{pub}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := l.SealedBatches(context.Background(), 0, func(b receipts.SealedBatch) error {
		_, err := s.Ingest(context.Background(), b)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	for _, args := range [][]string{
		{"receipts", "list", "--receipts", path, "--lock-timeout", "100ms"},
		{"receipts", "verify", "--receipts", path, "--lock-timeout", "100ms", "--trusted-key", pub},
	} {
		out, err := runCLI(t, args...)
		if err == nil {
			t.Fatalf("%v on a held store succeeded:\n%s", args, out)
		}
		msg := err.Error()
		for _, want := range []string{"central store " + path, "central store held by another process", "receipts collect", "stop it", "/snapshot"} {
			if !strings.Contains(msg, want) {
				t.Fatalf("%v: %q does not say %q", args[:2], msg, want)
			}
		}
		if strings.Contains(msg, "receipt log held") || strings.Contains(msg, "chio-agent running") {
			t.Fatalf("%v: %q speaks of a node's log", args[:2], msg)
		}
		if !errors.Is(err, receipts.ErrLocked) {
			t.Fatalf("%v: %v is not ErrLocked", args[:2], err)
		}
	}
	c, err := collect.New(s, collect.Options{Servers: []string{"nats://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr, stop, err := serveCollectorMetrics("127.0.0.1:0", c, s)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	resp, err := http.Get("http://" + addr + "/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	snap := filepath.Join(t.TempDir(), "snapshot.db")
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /snapshot: %s %v", resp.Status, err)
	}
	if err := os.WriteFile(snap, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "receipts", "verify", "--receipts", snap, "--trusted-key", pub)
	if err != nil || !strings.Contains(out, "30 receipts") {
		t.Fatalf("verify the snapshot: %v\n%s", err, out)
	}
}

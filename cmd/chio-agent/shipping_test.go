package main

import (
	"context"
	"encoding/json"

	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/receiptstest"
	"github.com/backbay-labs/chio-agent/receipts/ship"
)

// TestNodeAgentShipsToNATS: the node agent's setup (run and exec) with a
// nats:// sink keeps its log at receipts.path and ships it; stopping seals
// the tail and ships it too, so the stream ends with every receipt. A token
// the servers refuse stops the start.
func TestNodeAgentShipsToNATS(t *testing.T) {
	c := natscluster.Start(t)
	dir := t.TempDir()
	key, policy := nodeKeyAndPolicy(t, dir)
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(c.Token+"\n"), 0o600)
	logPath := filepath.Join(dir, "node", "receipts.db")
	cfg := filepath.Join(dir, "kernel.yaml")
	os.WriteFile(cfg, []byte("receipts:\n  sink: \""+c.URLs()+"\"\n  path: "+logPath+"\n  nats: {token_file: "+tokenFile+", replicas: 3}\n"), 0o600)
	lookup := func(string) (string, bool) { return "", false }

	f := &nodeFlags{Flags: config.Flags{Config: cfg, Policy: policy, KeyFile: key}}
	s, err := f.resolve(context.Background(), "warn", "text", t.Output(), lookup)
	if err != nil {
		t.Fatal(err)
	}
	if s.log.Path() != logPath || s.agentOpts.Shipper == nil {
		t.Fatalf("log %s, shipper %v; want %s and a shipper", s.log.Path(), s.agentOpts.Shipper, logPath)
	}
	const n = 137
	receiptstest.Append(t, s.log, s.key, 0, n)
	if err := s.close(); err != nil {
		t.Fatal(err)
	}

	got := 0
	for _, m := range c.Messages(t, "CHIO_RECEIPTS") {
		var b receipts.SealedBatch
		if err := json.Unmarshal(m.Data, &b); err != nil {
			t.Fatal(err)
		}
		got += len(b.Receipts)
	}
	info, err := c.StreamInfo("CHIO_RECEIPTS")
	if err != nil {
		t.Fatal(err)
	}
	if got != n || info.Config.Replicas != 3 {
		t.Fatalf("stream holds %d receipts with %d replicas; want %d and 3 (the tail sealed and shipped at stop)", got, info.Config.Replicas, n)
	}

	os.WriteFile(tokenFile, []byte("wrong\n"), 0o600)
	if s, err := f.resolve(context.Background(), "warn", "text", t.Output(), lookup); err == nil {
		s.close()
		t.Fatal("the node agent started with a token the servers refuse")
	} else if !strings.Contains(err.Error(), "refuse the credentials") {
		t.Fatalf("start error %q does not say the credentials were refused", err)
	}
}

// TestStatusPrintsShipping: `status` shows the shipper's lag, its window and its error
// (the backlog alarm), and nothing about shipping for a local sink.
func TestStatusPrintsShipping(t *testing.T) {
	var b strings.Builder
	printStatus(&b, agent.Status{})
	if strings.Contains(b.String(), "shipping") {
		t.Fatalf("a local sink's status mentions shipping:\n%s", b.String())
	}
	b.Reset()
	printStatus(&b, agent.Status{Shipping: &ship.Status{Subject: "chio.receipts.local-log-ab", Stream: "CHIO_RECEIPTS",
		AckedCheckpoint: 7, AckedSeq: 700, InFlight: 5, Window: 16, LagReceipts: 1234, LagSeconds: 61.5, Errors: 3,
		LastError: "receipt backlog of 1234 receipts exceeds max_backlog 1000"}})
	out := b.String()
	for _, want := range []string{"chio.receipts.local-log-ab", "DISCONNECTED", "acked checkpoint 7 (seq 700)", "5 of 16 batches in flight", "lag 1234 receipts / 61.5s", "exceeds max_backlog 1000"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status lacks %q:\n%s", want, out)
		}
	}
}

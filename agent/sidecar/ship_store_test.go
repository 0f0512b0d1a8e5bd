package sidecar

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/dynalite"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/receipts/sink"
	"github.com/backbay-labs/chio-agent/receipts/sink/sinktest"
)

// TestSidecarShipsReceiptsToStore: a sidecar whose sink is dynamodb://
// decides as ever (its local log first) and puts every sealed batch to the
// table, its admin status naming the sink and its lag; a missing table it
// may not create stops nothing (the backlog stays local) but shows in
// status.
func TestSidecarShipsReceiptsToStore(t *testing.T) {
	d := dynalite.Shared(t)
	dynalite.Env(t, d.Endpoint())
	url := "dynamodb://" + dynalite.Table(t)
	token := strings.Repeat("c", 32)
	f := startFixture(t, func(s *config.SidecarSettings) {
		s.ShipStore = url
		s.Config = &config.Config{Receipts: config.Receipts{Store: &config.StoreSink{CreateTable: true, Window: 2}}}
		s.CheckpointIdle = 20 * time.Millisecond
		s.ControlToken = token
	})
	const n = 25
	for i := 0; i < n; i++ {
		if resp, _ := f.do("GET", "/pets/1", nil, nil); resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	status := func() AdminStatus {
		resp, body := f.do("GET", "/chio/admin/status", nil, map[string]string{"Authorization": "Bearer " + token})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("admin status: %d %s", resp.StatusCode, body)
		}
		var st AdminStatus
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	deadline := time.Now().Add(time.Minute)
	st := status()
	for st.Shipping == nil || st.Shipping.AckedSeq != n {
		if time.Now().After(deadline) {
			t.Fatalf("shipping after a minute: %+v", st.Shipping)
		}
		time.Sleep(20 * time.Millisecond)
		st = status()
	}
	sh := st.Shipping
	if sh.LagReceipts != 0 || !sh.Connected || len(sh.Servers) != 1 || sh.Servers[0] != url || sh.Stream != "" || sh.Window != 2 {
		t.Fatalf("shipping status: %+v", sh)
	}
	store, err := sink.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	l := f.s.rlog
	if got := sinktest.CheckHolds(t, store, l); got != n {
		t.Fatalf("the table seals %d receipts, want %d", got, n)
	}

	// A table that does not exist and may not be created: the sidecar
	// starts and decides; status says why nothing ships.
	g := startFixture(t, func(s *config.SidecarSettings) {
		s.ShipStore = "dynamodb://" + dynalite.Table(t)
		s.Config = &config.Config{}
		s.CheckpointIdle = 20 * time.Millisecond
		s.ControlToken = token
	})
	if resp, _ := g.do("GET", "/pets/1", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("with a missing table: status %d", resp.StatusCode)
	}
	deadline = time.Now().Add(time.Minute)
	for {
		resp, body := g.do("GET", "/chio/admin/status", nil, map[string]string{"Authorization": "Bearer " + token})
		var st AdminStatus
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &st) != nil {
			t.Fatalf("admin status: %d %s", resp.StatusCode, body)
		}
		if st.Shipping != nil && strings.Contains(st.Shipping.LastError, "create_table") && st.Shipping.LagReceipts == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status after a minute: %+v", st.Shipping)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

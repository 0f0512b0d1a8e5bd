package sidecar

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/receipts"
)

// TestSidecarShipsReceiptsToNATS: a sidecar whose sink is a three-server
// JetStream cluster decides as ever (its local log first) and ships every
// sealed receipt to the cluster, whose admin status reports the shipping;
// a sink refusing its credentials stops the start.
func TestSidecarShipsReceiptsToNATS(t *testing.T) {
	c := natscluster.Start(t)
	t.Setenv("TEST_SIDECAR_NATS_TOKEN", c.Token)
	f := startFixture(t, func(s *config.SidecarSettings) {
		s.ShipServers = strings.Split(c.URLs(), ",")
		s.Config = &config.Config{Receipts: config.Receipts{NATS: &config.NATS{TokenEnv: "TEST_SIDECAR_NATS_TOKEN"}}}
		s.CheckpointIdle = 20 * time.Millisecond
		s.ControlToken = strings.Repeat("c", 32)
	})
	const n = 25
	for i := 0; i < n; i++ {
		resp, _ := f.do("GET", "/pets/1", nil, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	deadline := time.Now().Add(time.Minute)
	var st AdminStatus
	for {
		resp, body := f.do("GET", "/chio/admin/status", nil, map[string]string{"Authorization": "Bearer " + strings.Repeat("c", 32)})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("admin status: %d %s", resp.StatusCode, body)
		}
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatal(err)
		}
		if st.Shipping != nil && st.Shipping.AckedSeq == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shipping after a minute: %+v", st.Shipping)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Shipping.LagReceipts != 0 || !st.Shipping.Connected {
		t.Fatalf("shipping status: %+v", st.Shipping)
	}

	got := 0
	for _, m := range c.Messages(t, "CHIO_RECEIPTS") {
		var b receipts.SealedBatch
		if err := json.Unmarshal(m.Data, &b); err != nil {
			t.Fatal(err)
		}
		for _, r := range b.Receipts {
			if !strings.Contains(string(r), "getPet") {
				t.Fatalf("shipped receipt is no getPet decision: %s", r)
			}
			got++
		}
	}
	if got != n {
		t.Fatalf("stream holds %d receipts, want %d", got, n)
	}

	// Wrong credentials: refused at start, naming the cause.
	set := baseSettings(t, t.TempDir(), f.upstream.URL, newKey(t))
	set.ShipServers = strings.Split(c.URLs(), ",")
	t.Setenv("TEST_SIDECAR_BAD_TOKEN", "wrong")
	set.Config = &config.Config{Receipts: config.Receipts{NATS: &config.NATS{TokenEnv: "TEST_SIDECAR_BAD_TOKEN"}}}
	if s, err := Start(context.Background(), Options{Settings: set}); err == nil {
		s.Close(context.Background())
		t.Fatal("a sidecar started with credentials the servers refuse")
	} else if !strings.Contains(err.Error(), "refuse the credentials") {
		t.Fatalf("start error %q does not say the credentials were refused", err)
	}
}

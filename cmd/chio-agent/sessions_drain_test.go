package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/session"
)

// TestAPIProtectReplicasDrain: three api protect processes (static peers,
// takeover refuse) share sessions with a call limit. Mid-run one replica
// gets SIGTERM, as a rolling update or a scale-down sends it, while
// clients keep sending to the two others (the Service no longer lists a
// terminating pod) and an attacker sends requests of sessions one call
// from their limit to all three at once, the stopping one included. The
// stopping replica hands every session it held to that session's next
// owner before it exits: no session ever reaches the API more than
// max_calls times; during the drain the only refusal is 503
// chio_session_moving (retry); once it has exited, no request is refused
// at all (takeover refuse would refuse a stranded session with 503
// chio_session_history_unknown), and every session reaches exactly
// max_calls. Its journal ends each of its sessions with a handover to a
// replica that remains, every segment after one links to a handover, and
// every journal verifies.
func TestAPIProtectReplicasDrain(t *testing.T) {
	const replicas, sessions, limit, racers = 3, 150, 4, 30
	bin := binary(t)
	dir, _ := petsAPI(t)
	api := startSessionAPI(t)
	addrs := freeLoopbackAddrs(t, replicas)
	procs := make([]*protectProcess, replicas)
	dbs := make([]string, replicas)
	for i := range replicas {
		dbs[i] = filepath.Join(t.TempDir(), "r.db")
		env := replicaEnv(dir, dbs[i], i, limit, addrs[i], config.EnvSessionPeers+"="+strings.Join(addrs, ","),
			config.EnvSessionPeerProbe+"=200ms", config.EnvSessionDrainTimeout+"=10s")
		procs[i] = startProtect(t, bin, env, "--upstream", api.URL, "--spec", filepath.Join(dir, "openapi.yaml"), "--listen", addrs[i])
	}
	began := time.Now()
	phase := func(name string) { t.Logf("%s at %v", name, time.Since(began).Round(time.Millisecond)) }
	ring, err := session.NewRing(addrs)
	if err != nil {
		t.Fatal(err)
	}
	sid := func(i int) string { return fmt.Sprintf("dr-%d", i) }
	// Sessions [0, racers) are the attacker's.
	var owned []string // the sessions the stopped replica holds
	for i := range sessions {
		if ring.Owner(sid(i)) == addrs[1] {
			owned = append(owned, sid(i))
		}
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	var stopping, exited atomic.Bool // the stopped replica got SIGTERM, has exited
	var mu sync.Mutex
	statuses := map[string]int{}
	// get sends one request of session s to addr and checks its answer:
	// 200, 403 (the limit), a refused connection to the stopped replica
	// once it is gone, 503 chio_session_moving only while it drains.
	get := func(addr, s string) {
		after := exited.Load()
		key, _ := sessionRequest(client, addr, s)
		phase := "drain"
		if after {
			phase = "after"
		}
		switch {
		case key == "200 " || key == "403 chio_access_denied":
		case key == "conn-error" && addr == addrs[1] && stopping.Load():
			// Its listener closes once the drain is done.
		case key == "503 chio_session_moving" && !after:
		default:
			t.Errorf("%s: session %s at %s: %s", phase, s, addr, key)
		}
		mu.Lock()
		statuses[phase+" "+key]++
		mu.Unlock()
	}
	// send makes n requests of each session in [from, sessions), 24 at a
	// time, each session's spread over targets.
	send := func(n, from int, targets []string) {
		inParallel(n*(sessions-from), 24, func(i int) {
			s, k := from+i%(sessions-from), i/(sessions-from)
			get(targets[(s+k)%len(targets)], sid(s))
		})
	}
	// check fails when a session reached the API more than max_calls
	// times, and returns how many reached it exactly.
	check := func(phase string) int {
		t.Helper()
		api.mu.Lock()
		defer api.mu.Unlock()
		full := 0
		for i := range sessions {
			switch n := api.hits[sid(i)]; {
			case n > limit:
				t.Fatalf("%s: %s reached the API %d times; max_calls %d", phase, sid(i), n, limit)
			case n == limit:
				full++
			}
		}
		return full
	}
	// Every replica up: max_calls-2 calls of each session, spread over
	// all three; the attacker's sessions go to one call from their limit.
	send(limit-2, 0, addrs)
	for i := range racers {
		get(addrs[i%replicas], sid(i))
	}
	api.mu.Lock()
	for i := range sessions {
		want := limit - 1
		if i >= racers {
			want = limit - 2
		}
		if n := api.hits[sid(i)]; n != want {
			api.mu.Unlock()
			t.Fatalf("%s reached the API %d times with every replica up, want %d; statuses %v", sid(i), n, want, statuses)
		}
	}
	api.mu.Unlock()
	if len(owned) == 0 {
		t.Fatal("the stopped replica owns no session")
	}

	// SIGTERM replica 1 mid-run.
	phase("every replica up")
	stopping.Store(true)
	procs[1].cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := <-procs[1].exited
		exited.Store(true)
		if err != nil {
			t.Errorf("stopped replica exit: %v\n%s", err, procs[1].logs.String())
		}
	}()
	var load sync.WaitGroup
	load.Add(2)
	go func() { // clients, through the replicas that remain
		defer load.Done()
		send(1, racers, []string{addrs[0], addrs[2]})
	}()
	go func() { // the attacker: every racer on every replica at once, until it has exited
		defer load.Done()
		for {
			var wg sync.WaitGroup
			for i := range racers {
				for _, a := range addrs {
					wg.Add(1)
					go func() {
						defer wg.Done()
						get(a, sid(i))
					}()
				}
			}
			wg.Wait()
			select {
			case <-done:
				return
			default:
			}
		}
	}()
	load.Wait()
	<-done
	phase("drained and exited")
	check("during the drain")
	// After it exited: max_calls more calls of every session through the
	// two replicas left; none may be refused.
	send(limit, 0, []string{addrs[0], addrs[2]})
	if full := check("after the drain"); full != sessions {
		t.Fatalf("%d of %d sessions reached max_calls after the drain; statuses %v", full, sessions, statuses)
	}
	phase("after the drain")
	t.Logf("statuses: %v", statuses)
	logs := procs[1].logs.String()
	// Some of its sessions moved before the drain listed them: a request
	// of it forwarded to the next owner, which took it.
	if !strings.Contains(logs, "every session handed over") || !strings.Contains(logs, `"kept":0`) {
		t.Fatalf("the stopped replica did not log handing every session over:\n%s", logs)
	}

	// Journals: the stopped replica's sessions each end with a handover
	// to a replica that remains; segments link to handovers; all verify.
	procs[0].stop(t)
	procs[2].stop(t)
	phase("stopped")
	handovers := map[string]bool{}
	var linked []session.Link
	for i := range replicas {
		out, err := runCLI(t, "sessions", "verify", "--json", "--receipts", dbs[i])
		if err != nil {
			t.Fatalf("replica %d: sessions verify: %v\n%s", i, err, out)
		}
		var rep session.Report
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("replica %d: %v: %s", i, err, out)
		}
		last := map[string]session.Link{}
		for _, h := range rep.Handovers {
			handovers[h.Hash] = true
			if h.Seq > last[h.SessionID].Seq {
				last[h.SessionID] = h
			}
		}
		for _, l := range rep.Links {
			switch l.Link {
			case session.LinkLinked:
				linked = append(linked, l)
			case session.LinkUnlinked:
				t.Errorf("replica %d: an unlinked segment with takeover refuse: %+v", i, l)
			}
		}
		if i == 1 {
			for _, s := range owned {
				if h := last[s]; h.Holder != addrs[0] && h.Holder != addrs[2] {
					t.Errorf("the stopped replica's session %s: last handover %+v, want one to a replica that remains", s, h)
				}
			}
		}
		t.Logf("replica %d: %d sessions, %d entries, %d segments, %d handovers", i, rep.Sessions, rep.Entries, len(rep.Links), len(rep.Handovers))
	}
	if len(linked) < len(owned) {
		t.Fatalf("%d linked segments; want at least the %d sessions handed over", len(linked), len(owned))
	}
	for _, l := range linked {
		if !handovers[l.PrevHash] {
			t.Fatalf("segment %+v links to a hash no replica's journal has as a handover", l)
		}
	}
}

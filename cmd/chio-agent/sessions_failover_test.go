package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/session"
)

// TestAPIProtectReplicasFailover: api protect processes whose peers come
// from a headless-Service-like name served by a DNS server on loopback
// (CHIO_SESSION_PEERS_DNS through CHIO_SESSION_PEERS_RESOLVER). Sessions
// with a call limit are spread over every replica. Mid-run one replica is
// SIGKILLed (it stays listed, as a not-ready pod would: its peers must find
// it down by themselves) and a fourth is added to the name: no session ever
// reaches the API more than max_calls times. The killed replica restarts on
// its files: every session then reaches exactly max_calls in the journals
// (at the API one less where a call died with the killed replica), the sessions
// that moved continue their journals in segments linked to the previous
// holder's handover, and every replica's journal verifies. Then one
// replica flaps (SIGSTOP, SIGCONT, three times) while the exhausted sessions are hit on
// every replica in turn: none reaches the API again.
func TestAPIProtectReplicasFailover(t *testing.T) {
	const sessions, limit = 1000, 4
	bin := binary(t)
	dir, _ := petsAPI(t)
	api := startSessionAPI(t)
	mu, hits := &api.mu, api.hits
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"}
	port := freePortOn(t, ips)
	addrs := make([]string, len(ips))
	for i, ip := range ips {
		addrs[i] = net.JoinHostPort(ip, port)
	}
	const name = "chio-peers.chio.test"
	dns := testutil.StartDNS(t, name+".", ips[:3]...)
	procs := make([]*protectProcess, len(ips))
	dbs := make([]string, len(ips))
	start := func(i int) {
		env := replicaEnv(dir, dbs[i], i, limit, addrs[i], config.EnvSessionPeersDNS+"="+name+":"+port,
			config.EnvSessionPeersResolver+"="+dns.Addr, config.EnvSessionPeersRefresh+"=1s", config.EnvSessionPeerProbe+"=200ms")
		procs[i] = startProtect(t, bin, env, "--upstream", api.URL, "--spec", filepath.Join(dir, "openapi.yaml"), "--listen", addrs[i])
	}
	for i := range ips {
		dbs[i] = filepath.Join(t.TempDir(), "r.db")
	}
	began := time.Now()
	phase := func(name string) { t.Logf("%s at %v", name, time.Since(began).Round(time.Millisecond)) }
	for i := range 3 {
		start(i)
	}
	phase("three replicas started")
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 32}}
	defer client.CloseIdleConnections()
	var statusMu sync.Mutex
	statuses := map[string]int{}
	// limited: the sessions a replica refused for their limit (403). A
	// session can be at its limit in the journals and short of it at the
	// API: a call admitted by its holder, then cancelled when the replica
	// that forwarded it was SIGKILLed, spent its budget without reaching
	// the API (fail closed). The journals' figures are checked at the end.
	limited := map[string]bool{}
	// send makes n requests per session, 24 at a time, each session's
	// spread over targets; a replica that is down is a refused connection.
	send := func(n int, targets []string) {
		inParallel(n*sessions, 24, func(i int) {
			s, k := i%sessions, i/sessions // session s's k-th request
			sid := fmt.Sprintf("fo-%d", s)
			key, resp := sessionRequest(client, targets[(s+k)%len(targets)], sid)
			if resp != nil {
				switch resp.StatusCode {
				case 200, 403, 502, 503:
				default:
					t.Errorf("status %s", key)
				}
			}
			statusMu.Lock()
			statuses[key]++
			if resp != nil && resp.StatusCode == 403 {
				limited[sid] = true
			}
			statusMu.Unlock()
		})
	}
	// check fails when a session reached the API more than max_calls
	// times, and returns how many sessions reached it exactly max_calls.
	check := func(phase string) int {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		statusMu.Lock()
		defer statusMu.Unlock()
		full := 0
		for i := range sessions {
			sid := fmt.Sprintf("fo-%d", i)
			if hits[sid] > limit {
				for j := range procs {
					if procs[j] != nil && procs[j].cmd.ProcessState == nil {
						procs[j].cmd.Process.Kill()
						<-procs[j].exited
					}
					out, _ := runCLI(t, "sessions", "show", sid, "--json", "--receipts", dbs[j])
					t.Logf("DEBUG replica %d: %s", j, out)
				}
				t.Fatalf("%s: %s reached the API %d times; max_calls %d", phase, sid, hits[sid], limit)
			}
			if hits[sid] == limit || limited[sid] {
				full++
			}
		}
		return full
	}
	// short: the sessions refused for their limit before reaching the API
	// max_calls times.
	short := func() []string {
		mu.Lock()
		defer mu.Unlock()
		statusMu.Lock()
		defer statusMu.Unlock()
		var ss []string
		for i := range sessions {
			if sid := fmt.Sprintf("fo-%d", i); hits[sid] < limit && limited[sid] {
				ss = append(ss, fmt.Sprintf("%s (%d)", sid, hits[sid]))
			}
		}
		return ss
	}
	send(2, addrs[:3])
	check("three replicas")
	phase("three replicas done")
	mu.Lock()
	for i := range sessions {
		if sid := fmt.Sprintf("fo-%d", i); hits[sid] != 2 {
			t.Fatalf("%s reached the API %d times with every replica up, want 2; statuses %v", sid, hits[sid], statuses)
		}
	}
	mu.Unlock()
	// Mid-run: kill replica 1, add replica 3 to the name and start it.
	var mid sync.WaitGroup
	mid.Add(1)
	go func() {
		defer mid.Done()
		send(3, addrs)
	}()
	procs[1].cmd.Process.Signal(syscall.SIGKILL)
	<-procs[1].exited
	dns.Set(ips...)
	start(3)
	mid.Wait()
	phase("kill and add done")
	send(2, addrs)
	check("one killed, one added")
	phase("after kill and add done")
	// The killed replica comes back on its files: its sessions are
	// handed over to their owners (or stay), and every session ends at
	// exactly max_calls.
	start(1)
	full := 0
	for round := 0; round < 20 && full < sessions; round++ {
		send(1, addrs)
		full = check("killed replica back")
	}
	if full != sessions {
		for j := range procs {
			for _, l := range strings.Split(procs[j].logs.String(), "\n") {
				if strings.Contains(l, `"level":"error"`) {
					t.Logf("DEBUG %d %s", j, l)
				}
			}
		}
		// Where the sessions short of max_calls are, over every journal.
		for j := range procs {
			if procs[j].cmd.ProcessState == nil {
				procs[j].cmd.Process.Kill()
				<-procs[j].exited
			}
		}
		mu.Lock()
		for i, shown := 0, 0; i < sessions && shown < 3; i++ {
			if sid := fmt.Sprintf("fo-%d", i); hits[sid] < limit {
				shown++
				args := []string{"sessions", "verify", sid, "--chain-only", "--json"}
				for _, db := range dbs {
					args = append(args, "--journal", session.DefaultPath(db))
				}
				out, _ := runCLI(t, args...)
				t.Logf("DEBUG %s reached the API %d times; its runs over every journal: %.4000s", sid, hits[sid], out[strings.Index(out, `"stitched"`)+1:])
			}
		}
		mu.Unlock()
		t.Fatalf("%d of %d sessions reached max_calls after the killed replica came back; statuses %v", full, sessions, statuses)
	}
	// A call lost with the killed replica is one of the 24 in flight when
	// it died; more would be budget spent without a crash to explain it.
	if ss := short(); len(ss) > 24 {
		t.Fatalf("%d sessions refused for their limit short of it at the API: %v", len(ss), ss)
	} else if len(ss) > 0 {
		t.Logf("sessions whose call was lost with the killed replica (API calls): %v", ss)
	}
	phase("killed replica back, every session at max_calls")
	// The attack of a client while a replica flaps (stopped and resumed,
	// so its peers see it down, then up): its exhausted sessions hit on
	// every replica in turn. Another replica deciding them while it is
	// "down" would be a fresh budget; none may reach the API again.
	flapDone := make(chan struct{})
	go func() {
		defer close(flapDone)
		for range 3 {
			procs[0].cmd.Process.Signal(syscall.SIGSTOP)
			time.Sleep(time.Second) // five probes: its peers see it down
			procs[0].cmd.Process.Signal(syscall.SIGCONT)
			time.Sleep(200 * time.Millisecond)
		}
	}()
	for flapping := true; flapping; {
		select {
		case <-flapDone:
			flapping = false
		default:
		}
		send(1, addrs)
	}
	if full := check("a replica flapping"); full != sessions {
		t.Fatalf("%d of %d sessions at max_calls after the flapping", full, sessions)
	}
	phase("flapping")
	t.Logf("statuses over the run: %v", statuses)
	for i := range ips {
		procs[i].stop(t)
	}
	// Every replica's journal verifies with its receipts, and the
	// sessions stitch across them: each linked segment continues a
	// handover in exactly one other journal from its figures, no fork,
	// nothing unresolved, and (takeover refuse) nothing unlinked.
	args := []string{"sessions", "verify", "--json", "--fail-unlinked"}
	for _, db := range dbs {
		args = append(args, "--receipts", db)
	}
	// The binary, not runCLI: under -race the in-process command takes
	// ten times as long over these ~14,000 entries and receipts.
	verifyStart := time.Now()
	out, err := exec.Command(bin, args...).Output()
	var rep severalReport
	if jerr := json.Unmarshal(out, &rep); jerr != nil || rep.Stitched == nil {
		t.Fatalf("sessions verify: %v %v: %.2000s", err, jerr, out)
	}
	for _, s := range rep.Stitched.Sessions {
		for _, f := range s.Findings {
			if f.Kind != session.FindingHanded {
				t.Errorf("session %s: %s: %s entry %d: %s", s.SessionID, f.Kind, f.Journal, f.Seq, f.Detail)
			}
		}
	}
	if ee, ok := err.(*exec.ExitError); ok {
		t.Fatalf("sessions verify over the %d journals: %v: %s", len(dbs), err, ee.Stderr)
	} else if err != nil {
		t.Fatalf("sessions verify over the %d journals: %v", len(dbs), err)
	}
	t.Logf("sessions verify over %d journals in %v", len(dbs), time.Since(verifyStart).Round(time.Millisecond))
	for i, jr := range rep.Journals {
		t.Logf("replica %d: %d sessions, %d entries, %d receipts, %d segments, %d handovers", i, jr.Report.Sessions, jr.Report.Entries, jr.Report.Receipts, len(jr.Report.Links), len(jr.Report.Handovers))
	}
	st := rep.Stitched
	t.Logf("stitched: %d sessions, segments %v, %d links resolved, findings %v", len(st.Sessions), st.Segments, st.Resolved, st.Findings)
	if len(st.Sessions) != sessions || st.Resolved == 0 || st.Resolved != st.Segments[session.LinkLinked] {
		t.Fatalf("stitched %d sessions, want %d; %d of %d linked segments resolved (none: no session moved with its journal)",
			len(st.Sessions), sessions, st.Resolved, st.Segments[session.LinkLinked])
	}
	// The calls allowed in every run of a session, over every journal,
	// add up to max_calls: no replica decided one more.
	for _, s := range st.Sessions {
		if s.Calls != limit || s.Totals != nil && s.Totals.Calls != limit {
			t.Errorf("session %s: %d calls allowed over its %d runs, holder's figures %+v; want %d", s.SessionID, s.Calls, len(s.Runs), s.Totals, limit)
		}
	}
}

// freePortOn returns a TCP port free on every one of ips (loopback).
func freePortOn(t *testing.T, ips []string) string {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		ok := true
		for _, ip := range ips[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, port))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		ln.Close()
		if ok {
			return port
		}
	}
	t.Fatal("no port free on every loopback address")
	return ""
}

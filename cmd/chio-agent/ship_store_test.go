package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/dynalite"
	"github.com/backbay-labs/chio-agent/internal/testutil/objstore"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/receiptstest"
	"github.com/backbay-labs/chio-agent/receipts/ship"
	"github.com/backbay-labs/chio-agent/receipts/sink"
	"github.com/backbay-labs/chio-agent/receipts/sink/sinktest"
)

// storeSink is one store sink scheme the end-to-end shipping tests run
// against: setup makes an empty sink for t on its emulator, points this
// process's SDK at it (t.Setenv: the children inherit it) and returns the
// sink URL and the receipts.store settings (YAML flow mapping) it needs.
type storeSink struct {
	scheme string
	setup  func(t *testing.T) (url, storeYAML string)
}

// storeSinks are the schemes tested end to end: DynamoDB and the three
// object storage segment sinks, each on its local emulator.
var storeSinks = func() []storeSink {
	ss := []storeSink{{"dynamodb", func(t *testing.T) (string, string) {
		d := dynalite.Shared(t)
		dynalite.Env(t, d.Endpoint())
		return "dynamodb://" + dynalite.Table(t), "{create_table: true, window: 4}"
	}}}
	for _, o := range objstore.Stores {
		ss = append(ss, storeSink{o.Scheme, func(t *testing.T) (string, string) {
			base, _ := o.Bucket(t) // points this process's SDK (and the binary's) at the emulator
			return base + "receipts", "{window: 4}"
		}})
	}
	return ss
}()

// TestAPIProtectShipsToStoreSIGKILL: `api protect` with CHIO_RECEIPT_SINK
// naming a store keeps its log at receipts.path and ships it while it
// decides; SIGKILLed while shipping and started again, it resumes from
// what the store holds, and the store ends with every sealed batch of the
// log once (0 lost, 0 duplicated), verifying with this module's verifier
// and the independent one.
func TestAPIProtectShipsToStoreSIGKILL(t *testing.T) {
	bin := binary(t)
	for _, ss := range storeSinks {
		t.Run(ss.scheme, func(t *testing.T) {
			url, storeYAML := ss.setup(t)
			dir := t.TempDir()
			api := fmt.Sprintf("http://127.0.0.1:%d", serveBody(t, "ok"))
			spec := filepath.Join(dir, "openapi.yaml")
			os.WriteFile(spec, []byte(apiSpec), 0o600)
			policy := filepath.Join(dir, "policy.yaml")
			os.WriteFile(policy, []byte(apiPolicy), 0o600)
			db := filepath.Join(dir, "receipts.db")
			cfg := filepath.Join(dir, "kernel.yaml")
			os.WriteFile(cfg, []byte("receipts:\n  path: "+db+"\n  checkpoint_every: 5\n  checkpoint_idle: 20ms\n  store: "+storeYAML+"\n"), 0o600)
			env := sidecarEnv(config.EnvKernelConfigPath+"="+cfg, config.EnvPolicySource+"="+policy,
				config.EnvReceiptSink+"="+url, config.EnvSigningKey+"="+strings.Repeat("07", 32))
			store, err := sink.Open(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()

			sc := startProtect(t, bin, env, "--upstream", api, "--spec", spec)
			var sent atomic.Int64
			stop := drive(t, sc.addr, &sent)
			// Kill it once the store holds a few batches, traffic going on.
			deadline := time.Now().Add(time.Minute)
			for {
				st, err := store.Logs(context.Background())
				if err == nil && len(st) == 1 {
					if held, err := store.Stored(context.Background(), st[0], 0); err == nil && len(held) >= 5 {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("nothing shipped in a minute\n%s", sc.logs.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			sc.cmd.Process.Kill()
			<-sc.exited
			stop()
			killedAt := sent.Load()
			// What the killed run left to the next: sealed locally, not in
			// the store (its puts in flight or not yet made).
			backlog := func() (sealed uint64, held int) {
				l, err := receipts.Open(db, receipts.Options{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				last, _, err := l.SealedCheckpoints()
				if err != nil {
					t.Fatal(err)
				}
				id, _ := l.LogID()
				h, err := store.Stored(context.Background(), id, 0)
				if err != nil {
					t.Fatal(err)
				}
				return last, len(h)
			}
			cpsAtKill, heldAtKill := backlog()

			sc = startProtect(t, bin, env, "--upstream", api, "--spec", spec)
			stop = drive(t, sc.addr, &sent)
			time.Sleep(200 * time.Millisecond)
			stop()
			sc.stop(t) // seals the tail and drains it to the store
			if !strings.Contains(sc.logs.String(), url) {
				t.Fatalf("the sidecar's log does not name the sink %s\n%s", url, sc.logs.String())
			}

			l, err := receipts.Open(db, receipts.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			_, sealed, err := l.SealedCheckpoints()
			if err != nil {
				t.Fatal(err)
			}
			if sealed < uint64(sent.Load()) {
				t.Fatalf("the log seals %d receipts for %d answered requests (the tail sealed at stop)", sealed, sent.Load())
			}
			if n := sinktest.CheckHolds(t, store, l); uint64(n) != sealed {
				t.Fatalf("the store seals %d receipts, the log %d", n, sealed)
			}
			if out, err := exec.Command(bin, "receipts", "verify", "--receipts", db).CombinedOutput(); err != nil {
				t.Fatalf("receipts verify: %v %s", err, out)
			}
			// The sink read back as an auditor would, through the binary.
			if out, err := exec.Command(bin, "receipts", "verify", "--sink", url).CombinedOutput(); err != nil {
				t.Fatalf("receipts verify --sink %s: %v %s", url, err, out)
			}
			t.Logf("killed after %d requests with %d checkpoints sealed, %d in the store; %d receipts shipped in the end", killedAt, cpsAtKill, heldAtKill, sealed)
		})
	}
}

// drive sends GET /pets/1 to the sidecar at addr from four clients until
// stop, counting the answered ones in sent.
func drive(t *testing.T, addr string, sent *atomic.Int64) (stop func()) {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 5 * time.Second}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				resp, err := client.Get("http://" + addr + "/pets/1")
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					sent.Add(1)
				}
			}
		}()
	}
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait(); client.CloseIdleConnections() }) }
}

// TestDeployECSReceiptSink: the ECS manifest's sink, dynamodb://chio-receipts
// as the guide writes it, works as written: the sidecar's settings resolved
// from the manifest's environment (its secrets given) ship a log, kept at
// the default path in the task's working directory, to that table on
// dynalite (created beforehand, as the manifest's operator does).
func TestDeployECSReceiptSink(t *testing.T) {
	var td struct {
		ContainerDefinitions []struct {
			Name             string                         `json:"name"`
			Command          []string                       `json:"command"`
			WorkingDirectory string                         `json:"workingDirectory"`
			Environment      []struct{ Name, Value string } `json:"environment"`
		} `json:"containerDefinitions"`
	}
	if err := json.Unmarshal(readDeploy(t, "ecs/task-definition.json"), &td); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{config.EnvSigningKey: strings.Repeat("07", 32)} // a secret in the manifest
	workDir := ""
	for _, c := range td.ContainerDefinitions {
		if c.Name == "chio-sidecar" {
			workDir = c.WorkingDirectory
			for _, e := range c.Environment {
				env[e.Name] = e.Value
			}
		}
	}
	url := env[config.EnvReceiptSink]
	if url != "dynamodb://chio-receipts" {
		t.Fatalf("ecs: %s = %q, want the guide's dynamodb://chio-receipts", config.EnvReceiptSink, url)
	}
	d := dynalite.Shared(t)
	dynalite.Env(t, d.Endpoint())
	pre, err := sink.OpenWith(context.Background(), url, sink.OpenOptions{CreateTable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer pre.Close()
	if _, err := pre.Stored(context.Background(), "none", 0); err != nil { // creates the table
		t.Fatal(err)
	}

	set, err := config.ResolveSidecar(config.SidecarFlags{Upstream: "http://127.0.0.1:8080", Spec: "/etc/chio/openapi.yaml"},
		func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	o, ok := set.ShipOptions()
	if !ok || o.StoreURL != url || filepath.Join(workDir, set.ReceiptPath) != "/var/lib/chio/"+config.DefaultSidecarReceipts {
		t.Fatalf("ecs: ship options %+v (%v), local log %s in %s", o, ok, set.ReceiptPath, workDir)
	}
	l, key := sinktest.NewLog(t, 10)
	s, err := ship.New(l, o)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	receiptstest.Append(t, l, key, 0, 45)
	receiptstest.Seal(t, l)
	s.Stop(30 * time.Second)
	if n := sinktest.CheckHolds(t, pre, l); n != 45 {
		t.Fatalf("the table seals %d receipts, want 45", n)
	}
}

// TestNodeAgentShipsToStore: the node agent's setup (run and exec) with a
// store sink keeps its log at receipts.path and ships it with
// receipts.store's options; stopping seals the tail and ships it too, so
// the table ends with every receipt.
func TestNodeAgentShipsToStore(t *testing.T) {
	for _, ss := range storeSinks {
		t.Run(ss.scheme, func(t *testing.T) {
			url, storeYAML := ss.setup(t)
			dir := t.TempDir()
			key, policy := nodeKeyAndPolicy(t, dir)
			logPath := filepath.Join(dir, "node", "receipts.db")
			cfg := filepath.Join(dir, "kernel.yaml")
			os.WriteFile(cfg, []byte("receipts:\n  sink: \""+url+"\"\n  path: "+logPath+"\n  store: "+storeYAML+"\n"), 0o600)
			f := &nodeFlags{Flags: config.Flags{Config: cfg, Policy: policy, KeyFile: key}}
			s, err := f.resolve(context.Background(), "warn", "text", t.Output(), func(string) (string, bool) { return "", false })
			if err != nil {
				t.Fatal(err)
			}
			if s.log.Path() != logPath || s.agentOpts.Shipper == nil {
				t.Fatalf("log %s, shipper %v; want %s and a shipper", s.log.Path(), s.agentOpts.Shipper, logPath)
			}
			if st := s.agentOpts.Shipper.Status(); len(st.Servers) != 1 || st.Servers[0] != url {
				t.Fatalf("shipping status names %v, want %s", st.Servers, url)
			}
			const n = 137
			receiptstest.Append(t, s.log, s.key, 0, n)
			if err := s.close(); err != nil {
				t.Fatal(err)
			}
			store, err := sink.Open(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			l, err := receipts.Open(logPath, receipts.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if got := sinktest.CheckHolds(t, store, l); got != n {
				t.Fatalf("the store seals %d receipts, want %d (the tail sealed and shipped at stop)", got, n)
			}
		})
	}
}

// nodeKeyAndPolicy writes a signing key file and an empty policy into dir
// for the node agent's setup.
func nodeKeyAndPolicy(t *testing.T, dir string) (key, policy string) {
	t.Helper()
	key = filepath.Join(dir, "k")
	if _, err := kernel.GenerateKeyFile(key); err != nil {
		t.Fatal(err)
	}
	policy = filepath.Join(dir, "p.yaml")
	os.WriteFile(policy, []byte("hushspec: \"0.1.0\"\n"), 0o600)
	return key, policy
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/blobstore"
	"github.com/backbay-labs/chio-agent/internal/policysource"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/azurite"
	"github.com/backbay-labs/chio-agent/internal/testutil/fakegcs"
	"github.com/backbay-labs/chio-agent/internal/testutil/fakes3"
	"github.com/backbay-labs/chio-agent/internal/testutil/objstore"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// waitFor polls cond every 20ms for at most 30s: the sidecar's watch acts
// on its own interval, and the test waits for its effect.
func waitFor(t *testing.T, what string, logs *syncBuffer, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s\n%s", what, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sidecarEnv is the environment of an `api protect` child: this process's
// (the store SDK's variables the test set included), the CHIO_* contract
// cleared, then set.
func sidecarEnv(set ...string) []string {
	env := os.Environ()
	for _, n := range config.SidecarEnv {
		env = append(env, n+"=")
	}
	return append(env, set...)
}

// TestAPIProtectStorePolicy: `api protect` with CHIO_POLICY_SOURCE naming
// an object in each store (the guide's Cloud Run gs:// and ECS s3://
// manifests, and Azure's azblob://) decides by it, follows a change of the
// object on its own, refuses a broken replacement (logged, the policy in
// force staying), and its receipts verify.
func TestAPIProtectStorePolicy(t *testing.T) {
	bin := binary(t)
	objstore.Each(t, func(t *testing.T, st objstore.Store) {
		dir := t.TempDir()
		base, put := st.Bucket(t)
		put("chio/policy.yaml", apiPolicy)
		api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
		defer api.Close()
		spec := filepath.Join(dir, "openapi.yaml")
		os.WriteFile(spec, []byte(apiSpec), 0o600)
		db := filepath.Join(dir, "receipts.db")
		sc := startProtect(t, bin, sidecarEnv(config.EnvPolicySource+"="+base+"chio/policy.yaml", config.EnvPolicyWatchInterval+"=50ms",
			config.EnvReceiptSink+"="+db, config.EnvSigningKey+"="+strings.Repeat("07", 32)),
			"--upstream", api.URL, "--spec", spec)
		addr, logs := sc.addr, sc.logs
		client := &http.Client{Transport: &http.Transport{Proxy: nil}}
		code := func(method, path string) int {
			req, _ := http.NewRequest(method, "http://"+addr+path, nil)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		if code("GET", "/pets/1") != 200 || code("DELETE", "/pets/1") != 403 {
			t.Fatalf("the store's policy does not decide\n%s", logs.String())
		}
		// Changed in the store: getPet is no longer allowed, with no signal.
		put("chio/policy.yaml", strings.Replace(apiPolicy, "[listPets, getPet]", "[listPets]", 1))
		waitFor(t, "the changed policy to decide", logs, func() bool { return code("GET", "/pets/1") == 403 })
		// A broken replacement is refused and the policy in force stays.
		put("chio/policy.yaml", "hushspec: \"0.1.0\"\nrules: {tool_access: {alow: []}}\n")
		waitFor(t, "the refusal in the log", logs, func() bool {
			l := logs.String()
			return strings.Contains(l, "policy reload (source changed) refused") && strings.Contains(l, base+"chio/policy.yaml")
		})
		if code("GET", "/pets") != 200 || code("GET", "/pets/1") != 403 {
			t.Fatalf("the policy in force changed when a broken one was refused\n%s", logs.String())
		}
		sc.stop(t)
		if out, err := exec.Command(bin, "receipts", "verify", "--receipts", db).CombinedOutput(); err != nil {
			t.Fatalf("receipts verify: %v %s", err, out)
		}
	})
}

// TestAPIProtectStoreUnreachable: a store that cannot be reached stops the
// start (exit non-zero), the error naming the object and the cause.
func TestAPIProtectStoreUnreachable(t *testing.T) {
	bin := binary(t)
	st := objstore.Stores[0] // s3: the SDK gives up within a second
	src := st.Unreachable(t) + "chio/policy.yaml"
	dir := t.TempDir()
	spec := filepath.Join(dir, "openapi.yaml")
	os.WriteFile(spec, []byte(apiSpec), 0o600)
	cmd := exec.Command(bin, "api", "protect", "--upstream", "http://127.0.0.1:1", "--spec", spec, "--listen", "127.0.0.1:0")
	cmd.Env = sidecarEnv(config.EnvPolicySource+"="+src, config.EnvReceiptSink+"="+filepath.Join(dir, "r.db"),
		config.EnvSigningKey+"="+strings.Repeat("07", 32))
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("api protect started without its policy:\n%s", out)
	}
	if !strings.Contains(string(out), src) || !strings.Contains(string(out), "connection refused") {
		t.Fatalf("output does not name %s and the cause:\n%s", src, out)
	}
}

// TestRunStorePolicy: the node agent whose kernel.yaml names its policy in
// a store decides a protected workload's connections by it, follows a
// change of the object without a signal, and refuses a broken replacement
// (in status and the log, the old policy deciding on).
func TestRunStorePolicy(t *testing.T) {
	bin, _, pinDir, keyPath := daemonTest(t)
	port := serveBody(t, "upstream")
	objstore.Each(t, func(t *testing.T, st objstore.Store) {
		dir := t.TempDir()
		cg := testutil.NewCgroup(t, "")
		base, put := st.Bucket(t)
		policy := func(allow string) string {
			return "hushspec: \"0.1.0\"\nname: store\nrules:\n  egress:\n    allow: [" + allow + "]\n    default: block\n"
		}
		put("node/policy.yaml", policy("api.allowed.test"))
		d := newDaemon(t, bin, dir)
		kcfg := agentYAML(base+"node/policy.yaml", keyPath, filepath.Join(dir, "receipts.db"), pinDir+"-"+st.Scheme, d.socket) +
			fmt.Sprintf("  hosts: {api.allowed.test: [127.0.0.1]}\n  workloads:\n    - name: store\n      cgroup: %s\n", cg.Path) +
			"policy_watch_interval: 50ms\n"
		if err := os.WriteFile(d.config, []byte(kcfg), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { exec.Command(bin, "uninstall", "--force", "--pin-dir", pinDir+"-"+st.Scheme).Run() })
		d.start()
		defer func() {
			d.signal(syscall.SIGTERM)
			d.eventually("agent stopped", d.gone)
		}()
		curl := func() string { out, _ := curlIn(t, cg, "api.allowed.test", port); return out }
		if out := curl(); out != "200" {
			t.Fatalf("allowed by the store's policy: %q\n%s", out, d.logs)
		}
		put("node/policy.yaml", policy("other.test"))
		d.eventually("the changed policy to deny", func() bool { return curl() == "403" })
		put("node/policy.yaml", "hushspec: \"0.1.0\"\nrules:\n  egres: {}\n")
		d.eventually("the broken policy's refusal in status", func() bool { return d.statusError("policy reload (source changed) refused") })
		if out := curl(); out != "403" {
			t.Fatalf("after a refused reload: %q; want the policy in force's 403", out)
		}
		if !strings.Contains(d.logs.String(), base+"node/policy.yaml") {
			t.Fatalf("the refusal does not name the object:\n%s", d.logs)
		}
	})
}

// TestDeployStorePolicySources: the Cloud Run, ECS and Azure manifests load
// the policy from a gs://, an s3:// and an azblob:// object, as the guide's
// do, and those sources work as written (placeholders filled): an emulated
// store holding the named bucket and object serves the policy the sidecar
// loads.
func TestDeployStorePolicySources(t *testing.T) {
	env, _ := cloudRunSidecar(t).envMap()
	cloudRun := fillPlaceholders(env[config.EnvPolicySource])
	_, _, _, azEnv, _ := azureSidecar(t)
	az := fillPlaceholders(azEnv[config.EnvPolicySource])
	var td struct {
		ContainerDefinitions []struct {
			Name        string                         `json:"name"`
			Environment []struct{ Name, Value string } `json:"environment"`
		} `json:"containerDefinitions"`
		TaskRoleArn string `json:"taskRoleArn"`
	}
	if err := json.Unmarshal(readDeploy(t, "ecs/task-definition.json"), &td); err != nil {
		t.Fatal(err)
	}
	var ecs string
	for _, c := range td.ContainerDefinitions {
		for _, e := range c.Environment {
			if c.Name == "chio-sidecar" && e.Name == config.EnvPolicySource {
				ecs = e.Value
			}
		}
	}
	if td.TaskRoleArn == "" {
		t.Error("ecs: no taskRoleArn: the SDK would have no credentials to read the policy with")
	}
	for _, tc := range []struct {
		manifest, source, scheme string
		serve                    func(t *testing.T, bucket, key string)
	}{
		{"cloud-run", cloudRun, "gs", func(t *testing.T, bucket, key string) {
			s := fakegcs.Shared(t)
			s.BucketNamed(t, bucket)
			s.Put(t, bucket, key, []byte(apiPolicy))
		}},
		{"ecs", ecs, "s3", func(t *testing.T, bucket, key string) {
			s := fakes3.Shared(t)
			fakes3.Env(t, s.Endpoint())
			s.BucketNamed(t, bucket)
			s.Put(t, bucket, key, []byte(apiPolicy))
		}},
		{"azure", az, "azblob", func(t *testing.T, container, key string) {
			s := azurite.Shared(t)
			azurite.Env(t, s.Addr())
			s.ContainerNamed(t, container)
			s.Put(t, container, key, []byte(apiPolicy))
		}},
	} {
		t.Run(tc.manifest, func(t *testing.T) {
			l, err := policysource.Parse(tc.source)
			if err != nil || l.Scheme != tc.scheme {
				t.Fatalf("%s: %s = %q (%v); want a %s:// object", tc.manifest, config.EnvPolicySource, tc.source, err, tc.scheme)
			}
			bucket := l.Bucket
			if l.Container != "" {
				bucket = l.Container
			}
			tc.serve(t, bucket, l.Key)
			p, err := config.LoadPolicy(t.Context(), tc.source, "")
			if err != nil {
				t.Fatalf("%s: load %s: %v", tc.manifest, tc.source, err)
			}
			if d := p.Evaluate(hushspec.Action{Type: "tool_call", Target: "listPets"}).Decision; d != hushspec.DecisionAllow {
				t.Fatalf("%s: the policy served decides listPets %s", tc.manifest, d)
			}
		})
	}
}

// TestDeployStoreReceiptSinks: the Cloud Run and Azure manifests ship
// receipts to a gs:// and an azblob:// segment sink, and those sinks work as
// written (placeholders filled): a log's sealed batches put into an
// emulated store holding the named bucket (container) are what `receipts
// verify --sink` reads back and verifies.
func TestDeployStoreReceiptSinks(t *testing.T) {
	env, _ := cloudRunSidecar(t).envMap()
	_, _, _, azEnv, _ := azureSidecar(t)
	db, _, _ := nodeLog(t, "deploy", "30")
	_, bs := logBatches(t, db)
	for _, tc := range []struct {
		manifest, url, scheme string
		serve                 func(t *testing.T, bucket string)
	}{
		{"cloud-run", fillPlaceholders(env[config.EnvReceiptSink]), "gs", func(t *testing.T, bucket string) {
			fakegcs.Shared(t).BucketNamed(t, bucket)
		}},
		{"azure", fillPlaceholders(azEnv[config.EnvReceiptSink]), "azblob", func(t *testing.T, container string) {
			s := azurite.Shared(t)
			azurite.Env(t, s.Addr())
			s.ContainerNamed(t, container)
		}},
	} {
		t.Run(tc.manifest, func(t *testing.T) {
			u, err := blobstore.ParseURL(tc.url)
			if err != nil || u.Scheme != tc.scheme || u.Path == "" {
				t.Fatalf("%s: %s = %q (%v); want a %s:// sink with a prefix", tc.manifest, config.EnvReceiptSink, tc.url, err, tc.scheme)
			}
			bucket := u.Bucket
			if u.Container != "" {
				bucket = u.Container
			}
			tc.serve(t, bucket)
			shipTo(t, tc.url, bs)
			out, err := runCLI(t, "receipts", "verify", "--sink", tc.url)
			if err != nil || !strings.Contains(out, "30 receipts (seq 1-30") {
				t.Fatalf("%s: verify --sink %s: %v\n%s", tc.manifest, tc.url, err, out)
			}
		})
	}
}

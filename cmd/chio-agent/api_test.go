package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent/sidecar"
	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/azurite"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/receipts/sink"
)

const apiSpec = `openapi: 3.0.3
info: {title: Pets, version: "1"}
paths:
  /pets:
    get: {operationId: listPets}
  /pets/{petId}:
    get: {operationId: getPet}
    delete: {operationId: deletePet}
`

const apiPolicy = `hushspec: "0.1.0"
rules:
  tool_access:
    allow: [listPets, getPet]
    default: block
`

// apiEnv clears the CHIO_* contract for a test, so the machine's own
// environment cannot leak in, and sets a signing key.
func apiEnv(t *testing.T) {
	for _, n := range config.SidecarEnv {
		t.Setenv(n, "")
	}
	t.Setenv(config.EnvSigningKey, strings.Repeat("07", 32))
}

func TestAPIProtectRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	spec := filepath.Join(dir, "openapi.yaml")
	policy := filepath.Join(dir, "policy.yaml")
	badPolicy := filepath.Join(dir, "bad.yaml")
	os.WriteFile(spec, []byte(apiSpec), 0o600)
	os.WriteFile(policy, []byte(apiPolicy), 0o600)
	os.WriteFile(badPolicy, []byte("hushspec: \"0.1.0\"\nrules: {tool_acess: {}}\n"), 0o600)
	base := []string{"api", "protect", "--upstream", "http://127.0.0.1:1", "--spec", spec, "--listen", "127.0.0.1:0"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no policy", nil, nil, "no policy"},
		{"missing policy", []string{"--policy", filepath.Join(dir, "absent.yaml")}, nil, "absent.yaml"},
		{"invalid policy", []string{"--policy", badPolicy}, nil, "tool_acess"},
		{"ftp policy", nil, map[string]string{config.EnvPolicySource: "ftp://host/policy.yaml"}, `unsupported scheme "ftp"`},
		{"gs policy with a query", nil, map[string]string{config.EnvPolicySource: "gs://bucket/policy.yaml?generation=1"}, "a query is not part of an object name"},
		{"ftp receipts", []string{"--policy", policy, "--receipts", "ftp://host/receipts"}, nil, `unsupported scheme "ftp"`},
		{"bad dynamodb receipts", []string{"--policy", policy, "--receipts", "dynamodb://x"}, nil, `table name "x"`},
		{"bigquery receipts", []string{"--policy", policy}, map[string]string{config.EnvReceiptSink: "bigquery://p/d"}, "ship to a gs://BUCKET/PREFIX segment sink"},
		{"missing kernel config", []string{"--policy", policy}, map[string]string{config.EnvKernelConfigPath: filepath.Join(dir, "none.yaml")}, "none.yaml"},
		{"invalid kernel config", []string{"--policy", policy, "--config", spec}, nil, `unknown key "openapi"`},
		{"bad spec", []string{"--policy", policy, "--spec", policy}, nil, "openapi"},
		{"short control token", []string{"--policy", policy}, map[string]string{config.EnvSidecarControlToken: "123"}, "at least 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			apiEnv(t)
			t.Setenv(config.EnvReceiptSink, filepath.Join(t.TempDir(), "r.db"))
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			// The later --spec flag wins over base's.
			err := runBounded(t, append(slices.Clone(base), tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) || exitCode(err) == 0 {
				t.Fatalf("err = %v; want a non-zero exit mentioning %q", err, tc.want)
			}
		})
	}
}

// runBounded runs the command tree under a deadline, so a start that
// wrongly succeeds fails the test instead of serving forever.
func runBounded(t *testing.T, args ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	root := newRootCommand()
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if ctx.Err() != nil {
		t.Fatalf("%v started and served until the deadline; want a refused start", args)
	}
	return err
}

func TestLocalHealthURL(t *testing.T) {
	for env, want := range map[[2]string]string{
		{"", ""}:                      "http://127.0.0.1:9090/chio/health",
		{"0.0.0.0:8080", "/ready"}:    "http://127.0.0.1:8080/ready",
		{"[::]:8080", ""}:             "http://[::1]:8080/chio/health",
		{":7000", ""}:                 "http://127.0.0.1:7000/chio/health",
		{"10.0.0.5:9000", "/healthz"}: "http://10.0.0.5:9000/healthz",
	} {
		got, err := localHealthURL(func(k string) (string, bool) {
			switch k {
			case config.EnvListenAddr:
				return env[0], env[0] != ""
			case config.EnvHealthPath:
				return env[1], env[1] != ""
			}
			return "", false
		}, config.Sidecar{})
		if err != nil || got != want {
			t.Errorf("%v: %q %v; want %q", env, got, err, want)
		}
	}
	// With no variable, kernel.yaml's sidecar section, as api protect reads it.
	got, err := localHealthURL(func(string) (string, bool) { return "", false }, config.Sidecar{Listen: "0.0.0.0:7100", HealthPath: "/ready"})
	if err != nil || got != "http://127.0.0.1:7100/ready" {
		t.Errorf("from kernel.yaml: %q %v", got, err)
	}
}

// TestAPIProtectEndToEnd runs the binary as a new user would: a small local
// API, a spec, a policy, `chio-agent api protect` in front, curl-like
// clients; then `api health`, a clean stop, and the receipt log verified.
func TestAPIProtectEndToEnd(t *testing.T) {
	bin := binary(t)
	dir, api := petsAPI(t)
	keyOut, err := exec.Command(bin, "keygen", "--out", filepath.Join(dir, "kernel.key")).CombinedOutput()
	if err != nil {
		t.Fatalf("keygen: %v %s", err, keyOut)
	}
	db := filepath.Join(dir, "receipts.db")
	sc := startProtect(t, bin, sidecarEnv(config.EnvPolicySource+"="+filepath.Join(dir, "policy.yaml"), config.EnvReceiptSink+"=file://"+db),
		"--upstream", api.URL, "--spec", filepath.Join(dir, "openapi.yaml"), "--key", filepath.Join(dir, "kernel.key"))
	addr, logs := sc.addr, sc.logs
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	get := func(method, path string) (*http.Response, string) {
		req, _ := http.NewRequest(method, "http://"+addr+path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := get("GET", "/pets/1")
	if resp.StatusCode != 200 || body != "pets api: /pets/1" || resp.Header.Get(sidecar.HeaderReceiptID) == "" {
		t.Fatalf("allowed: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, body = get("DELETE", "/pets/1")
	if resp.StatusCode != 403 || !strings.Contains(body, `"error":"chio_access_denied"`) || !strings.Contains(body, resp.Header.Get(sidecar.HeaderReceiptID)) {
		t.Fatalf("denied: %d %q", resp.StatusCode, body)
	}
	resp, _ = get("GET", "/internal/debug")
	if resp.StatusCode != 403 || resp.Header.Get(sidecar.HeaderReceiptID) == "" {
		t.Fatalf("unmatched: %d", resp.StatusCode)
	}
	resp, _ = get("GET", "/chio/admin/status")
	if resp.StatusCode != 403 {
		t.Fatalf("admin without a token: %d; want 403", resp.StatusCode)
	}
	// SIGHUP reloads the policy: getPet is no longer allowed.
	os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(strings.Replace(apiPolicy, "[listPets, getPet]", "[listPets]", 1)), 0o600)
	sc.cmd.Process.Signal(syscall.SIGHUP)
	for i := 0; ; i++ {
		if resp, _ := get("GET", "/pets/1"); resp.StatusCode == 403 {
			break
		}
		if i == 500 {
			t.Fatalf("GET /pets/1 still allowed after SIGHUP with a policy that no longer allows it\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	hc := exec.Command(bin, "api", "health", "--url", "http://"+addr+config.DefaultHealthPath)
	if out, err := hc.CombinedOutput(); err != nil || !strings.Contains(string(out), `"status":"ok"`) {
		t.Fatalf("api health: %v %s", err, out)
	}

	sc.stop(t)
	out, err := exec.Command(bin, "receipts", "verify", "--receipts", db).CombinedOutput()
	if err != nil {
		t.Fatalf("receipts verify: %v %s", err, out)
	}
	// A sidecar that is gone is not healthy.
	if err := exec.Command(bin, "api", "health", "--url", "http://"+addr+config.DefaultHealthPath, "--timeout", "2s").Run(); err == nil {
		t.Fatal("api health passed with the sidecar stopped")
	}
}

// petsAPI is a small API on loopback and a directory holding its spec
// (openapi.yaml) and a policy for it (policy.yaml).
func petsAPI(t *testing.T) (dir string, api *httptest.Server) {
	dir = t.TempDir()
	api = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "pets api: "+r.URL.Path)
	}))
	t.Cleanup(api.Close)
	os.WriteFile(filepath.Join(dir, "openapi.yaml"), []byte(apiSpec), 0o600)
	os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(apiPolicy), 0o600)
	return dir, api
}

// protectProcess is `chio-agent api protect` running as its own process.
type protectProcess struct {
	cmd    *exec.Cmd
	logs   *syncBuffer
	addr   string
	exited chan error
}

// startProtect runs bin api protect on a free loopback port with env added
// to the test's environment (sidecarEnv clears the CHIO_* contract first),
// and waits for its ready file. The process is
// killed at cleanup unless stop ended it.
func startProtect(t *testing.T, bin string, env []string, args ...string) *protectProcess {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	p := &protectProcess{logs: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(bin, append([]string{"api", "protect", "--listen", "127.0.0.1:0", "--ready-file", ready}, args...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	for p.addr == "" {
		if b, err := os.ReadFile(ready); err == nil && strings.HasSuffix(string(b), "\n") {
			p.addr = strings.TrimSpace(string(b))
			break
		}
		select {
		case err := <-p.exited:
			t.Fatalf("sidecar exited before ready: %v\n%s", err, p.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return p
}

// stop ends the sidecar with SIGTERM and fails the test unless it exits 0.
func (p *protectProcess) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("sidecar exit: %v\n%s", err, p.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("sidecar did not stop on SIGTERM\n%s", p.logs.String())
	}
}

// TestNodeAgentEnvMatchesRun: the variables the node agent's setup reads
// are those config.NodeAgentEnv (and so the manifests' drift tests) name.
func TestNodeAgentEnvMatchesRun(t *testing.T) {
	var got []string
	lookup := func(name string) (string, bool) {
		if !slices.Contains(got, name) {
			got = append(got, name)
		}
		return "", false
	}
	// Every setting given by a flag: the variables are still read (a flag
	// beats them), and nothing is left to fail.
	dir := t.TempDir()
	key, policy := nodeKeyAndPolicy(t, dir)
	f := &nodeFlags{Flags: config.Flags{Policy: policy, KeyFile: key, Receipts: filepath.Join(dir, "r.db")}}
	s, err := f.resolve(context.Background(), "warn", "text", io.Discard, lookup)
	if err != nil {
		t.Fatal(err)
	}
	s.close()
	slices.Sort(got)
	want := slices.Clone(config.NodeAgentEnv)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("node agent reads %v; config.NodeAgentEnv says %v", got, want)
	}
}

// ---- Manifest drift: deploy/ may only say what the binary does. ----

func deployDir(t *testing.T) string {
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "deploy")
}

func readDeploy(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkArgs fails unless the binary accepts args: a runnable command, its
// flags and its positional arguments.
func checkArgs(t *testing.T, src string, args []string) {
	t.Helper()
	root := newRootCommand()
	cmd, rest, err := root.Find(args)
	if err != nil || cmd == root || !cmd.Runnable() {
		t.Errorf("%s: %q is no command of chio-agent (%v)", src, args, err)
		return
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Errorf("%s: %q: %v", src, args, err)
		return
	}
	// Manifests use today's spellings, not the deprecated aliases.
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if f.Deprecated != "" {
			t.Errorf("%s: %q uses the deprecated --%s (%s)", src, args, f.Name, f.Deprecated)
		}
	})
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		t.Errorf("%s: %q: %v", src, args, err)
	}
}

func checkEnvNames(t *testing.T, src string, names, allowed []string) {
	t.Helper()
	for _, n := range names {
		if strings.HasPrefix(n, "CHIO_") && !slices.Contains(allowed, n) {
			t.Errorf("%s names %s, which this binary does not read here (it reads %v)", src, n, allowed)
		}
	}
}

// sidecarEndpoint is the health path and port a sidecar container serves,
// from its environment, as the binary computes them.
func sidecarEndpoint(t *testing.T, src string, env map[string]string) (string, int) {
	t.Helper()
	listen := env[config.EnvListenAddr]
	if listen == "" {
		t.Fatalf("%s: a container sidecar must set %s (the default is loopback only)", src, config.EnvListenAddr)
	}
	_, port, err := splitHostPort(listen)
	if err != nil {
		t.Fatalf("%s: %s: %v", src, config.EnvListenAddr, err)
	}
	path := env[config.EnvHealthPath]
	if path == "" {
		path = config.DefaultHealthPath
	}
	return path, port
}

func splitHostPort(s string) (string, int, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", 0, strconv.ErrSyntax
	}
	p, err := strconv.Atoi(s[i+1:])
	return s[:i], p, err
}

type k8sContainer struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	Ports []struct {
		ContainerPort int `yaml:"containerPort"`
	} `yaml:"ports"`
	SecurityContext *struct {
		Privileged               *bool  `yaml:"privileged"`
		RunAsUser                *int64 `yaml:"runAsUser"`
		RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
		ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
		Capabilities             struct {
			Add  []string `yaml:"add"`
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	StartupProbe   *k8sProbe        `yaml:"startupProbe"`
	ReadinessProbe *k8sProbe        `yaml:"readinessProbe"`
	LivenessProbe  *k8sProbe        `yaml:"livenessProbe"`
	VolumeMounts   []k8sVolumeMount `yaml:"volumeMounts"`
}

type k8sVolumeMount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port int    `yaml:"port"`
	} `yaml:"httpGet"`
	Exec *struct {
		Command []string `yaml:"command"`
	} `yaml:"exec"`
}

type k8sPodSpec struct {
	AutomountServiceAccountToken *bool          `yaml:"automountServiceAccountToken"`
	Containers                   []k8sContainer `yaml:"containers"`
	Volumes                      []struct {
		Name     string `yaml:"name"`
		HostPath *struct {
			Path string `yaml:"path"`
		} `yaml:"hostPath"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

func (c *k8sContainer) envMap() (map[string]string, []string) {
	m := map[string]string{}
	var names []string
	for _, e := range c.Env {
		m[e.Name] = e.Value
		names = append(names, e.Name)
	}
	return m, names
}

// cloudRunSidecar is the chio-sidecar container of the Cloud Run service.
func cloudRunSidecar(t *testing.T) *k8sContainer {
	t.Helper()
	var svc struct {
		Spec struct {
			Template struct {
				Spec k8sPodSpec `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(readDeploy(t, "cloud-run/service.yaml"), &svc); err != nil {
		t.Fatal(err)
	}
	for i := range svc.Spec.Template.Spec.Containers {
		if svc.Spec.Template.Spec.Containers[i].Name == "chio-sidecar" {
			return &svc.Spec.Template.Spec.Containers[i]
		}
	}
	t.Fatal("cloud-run: no chio-sidecar container")
	return nil
}

func TestDeployCloudRun(t *testing.T) {
	c := cloudRunSidecar(t)
	env, names := c.envMap()
	checkEnvNames(t, "cloud-run", names, config.SidecarEnv)
	checkArgs(t, "cloud-run args", c.Args)
	path, port := sidecarEndpoint(t, "cloud-run", env)
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != port {
		t.Errorf("cloud-run: container port %v; the sidecar listens on %d", c.Ports, port)
	}
	if p := c.StartupProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port != port {
		t.Errorf("cloud-run: startup probe %+v; want GET %s on %d", p, path, port)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != sidecar.PathLive || p.HTTPGet.Port != port {
		t.Errorf("cloud-run: liveness probe; want GET %s on %d", sidecar.PathLive, port)
	}
	if sc := c.SecurityContext; sc != nil && sc.RunAsUser != nil && *sc.RunAsUser == 0 {
		t.Error("cloud-run: the sidecar must not run as root")
	}
	checkReceiptMount(t, "cloud-run", env, c)
}

// checkReceiptMount: the receipt log must sit on a mounted volume, since
// the root filesystem is read-only (or, on Cloud Run, not ours to keep). A
// store sink (gs://, azblob://) must be a sink URL that checks, and the
// local log, its first write, stays on the volume the sidecar image
// declares (/var/lib/chio).
func checkReceiptMount(t *testing.T, src string, env map[string]string, c *k8sContainer) {
	t.Helper()
	local := env[config.EnvReceiptSink]
	if sink.IsStore(local) {
		if err := sink.Check(fillPlaceholders(local)); err != nil {
			t.Errorf("%s: %v", src, err)
		}
		local = sidecarReceiptDir + "/receipts.db"
	}
	path, err := config.ReceiptPath(local)
	if err != nil {
		t.Errorf("%s: %v", src, err)
		return
	}
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/") {
			return
		}
	}
	t.Errorf("%s: receipt log %s is on no mounted volume", src, path)
}

// sidecarReceiptDir is the sidecar image's receipt volume.
const sidecarReceiptDir = "/var/lib/chio"

func TestDeployECS(t *testing.T) {
	var td struct {
		ContainerDefinitions []struct {
			Name                   string   `json:"name"`
			User                   string   `json:"user"`
			ReadonlyRootFilesystem *bool    `json:"readonlyRootFilesystem"`
			Command                []string `json:"command"`
			EntryPoint             []string `json:"entryPoint"`
			PortMappings           []struct {
				ContainerPort int `json:"containerPort"`
			} `json:"portMappings"`
			Environment []struct{ Name, Value string } `json:"environment"`
			Secrets     []struct {
				Name      string `json:"name"`
				ValueFrom string `json:"valueFrom"`
			} `json:"secrets"`
			MountPoints []struct {
				ContainerPath string `json:"containerPath"`
			} `json:"mountPoints"`
			WorkingDirectory string `json:"workingDirectory"`
			HealthCheck      *struct {
				Command []string `json:"command"`
			} `json:"healthCheck"`
		} `json:"containerDefinitions"`
	}
	dec := json.NewDecoder(strings.NewReader(string(readDeploy(t, "ecs/task-definition.json"))))
	if err := dec.Decode(&td); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range td.ContainerDefinitions {
		if c.Name != "chio-sidecar" {
			continue
		}
		found = true
		env := map[string]string{}
		var names []string
		for _, e := range c.Environment {
			env[e.Name] = e.Value
			names = append(names, e.Name)
		}
		for _, s := range c.Secrets {
			names = append(names, s.Name)
		}
		checkEnvNames(t, "ecs", names, config.SidecarEnv)
		if c.EntryPoint != nil {
			t.Error("ecs: entryPoint overrides the image's /chio-agent")
		}
		checkArgs(t, "ecs command", c.Command)
		_, port := sidecarEndpoint(t, "ecs", env)
		if len(c.PortMappings) != 1 || c.PortMappings[0].ContainerPort != port {
			t.Errorf("ecs: port mappings %v; the sidecar listens on %d", c.PortMappings, port)
		}
		if c.User != "65532:65532" {
			t.Errorf("ecs: user %q; want 65532:65532", c.User)
		}
		if c.ReadonlyRootFilesystem == nil || !*c.ReadonlyRootFilesystem {
			t.Error("ecs: readonlyRootFilesystem must be true")
		}
		hc := c.HealthCheck
		if hc == nil || len(hc.Command) < 3 || hc.Command[0] != "CMD" || hc.Command[1] != "/chio-agent" {
			t.Fatalf("ecs: health check %+v; want CMD /chio-agent api health", hc)
		}
		checkArgs(t, "ecs health check", hc.Command[2:])
		if !slices.Equal(hc.Command[2:4], []string{"api", "health"}) {
			t.Errorf("ecs: health check runs %v; want api health", hc.Command[2:])
		}
		// The local log: the sink itself, or, beside a store sink, the
		// sidecar's default relative to the working directory.
		url, logPath := env[config.EnvReceiptSink], ""
		if sink.IsStore(url) {
			if err := sink.Check(url); err != nil {
				t.Errorf("ecs: receipt sink: %v", err)
			}
			logPath = filepath.Join(c.WorkingDirectory, config.DefaultSidecarReceipts)
		} else {
			logPath, _ = config.ReceiptPath(url)
		}
		mounted := false
		for _, m := range c.MountPoints {
			mounted = mounted || strings.HasPrefix(logPath, m.ContainerPath+"/")
		}
		if !filepath.IsAbs(logPath) || !mounted {
			t.Errorf("ecs: receipt log %s is on no mount point", logPath)
		}
	}
	if !found {
		t.Fatal("ecs: no chio-sidecar container")
	}
}

// azureSidecar reads the chio-sidecar container of the Azure manifest: its
// block of text, args, environment (values) and variable names.
func azureSidecar(t *testing.T) (text, block string, args []string, env map[string]string, names []string) {
	t.Helper()
	text = string(readDeploy(t, "azure/container-app.bicep"))
	start := strings.Index(text, "name: 'chio-sidecar'")
	end := strings.Index(text, "name: 'api'")
	if start < 0 || end < start {
		t.Fatal("azure: no chio-sidecar container before the api container")
	}
	block = text[start:end]
	quoted := regexp.MustCompile(`'([^']*)'`)
	argsLine := regexp.MustCompile(`args: \[([^\]]*)\]`).FindStringSubmatch(block)
	if argsLine == nil {
		t.Fatal("azure: no args")
	}
	for _, m := range quoted.FindAllStringSubmatch(argsLine[1], -1) {
		args = append(args, m[1])
	}
	env = map[string]string{}
	for _, m := range regexp.MustCompile(`\{ name: '([^']+)', (value|secretRef): '([^']*)' \}`).FindAllStringSubmatch(block, -1) {
		names = append(names, m[1])
		if m[2] == "value" {
			env[m[1]] = m[3]
		}
	}
	if len(names) == 0 {
		t.Fatal("azure: no environment found")
	}
	return text, block, args, env, names
}

func TestDeployAzure(t *testing.T) {
	text, block, args, env, names := azureSidecar(t)
	checkArgs(t, "azure args", args)
	checkEnvNames(t, "azure", names, config.SidecarEnv)
	path, port := sidecarEndpoint(t, "azure", env)
	tp := regexp.MustCompile(`targetPort: (\d+)`).FindStringSubmatch(text)
	if tp == nil || tp[1] != strconv.Itoa(port) {
		t.Errorf("azure: ingress targetPort %v; the sidecar listens on %d", tp, port)
	}
	probes := map[string][2]string{}
	for _, m := range regexp.MustCompile(`type: '(\w+)', httpGet: \{ path: '([^']+)', port: (\d+) \}`).FindAllStringSubmatch(block, -1) {
		probes[m[1]] = [2]string{m[2], m[3]}
	}
	if probes["Readiness"] != [2]string{path, strconv.Itoa(port)} || probes["Liveness"] != [2]string{sidecar.PathLive, strconv.Itoa(port)} {
		t.Errorf("azure: probes %v; want readiness %s and liveness %s on %d", probes, path, sidecar.PathLive, port)
	}
	// The policy and the receipt sink are in the storage account the
	// template is given, reached with the app's managed identity.
	for _, v := range []string{config.EnvPolicySource, config.EnvReceiptSink} {
		if !strings.HasPrefix(env[v], "azblob://${storageAccount}/") {
			t.Errorf("azure: %s = %q; want an azblob:// URL in the storageAccount parameter's account", v, env[v])
		}
	}
	if err := sink.Check(fillPlaceholders(env[config.EnvReceiptSink])); err != nil {
		t.Errorf("azure: %v", err)
	}
	for _, want := range []string{"type: 'SystemAssigned'", "principalId: app.identity.principalId", "ba92f5b4-2d11-453d-a403-e96b0029c9fe"} {
		if !strings.Contains(text, want) {
			t.Errorf("azure: no %q: the SDK would have no identity with Storage Blob Data Contributor on the account", want)
		}
	}
	checkReceiptMount(t, "azure", env, &k8sContainer{VolumeMounts: azureMounts(block)})
}

// azureMounts are the volume mounts of a bicep container block.
func azureMounts(block string) []k8sVolumeMount {
	var out []k8sVolumeMount
	for _, m := range regexp.MustCompile(`\{ volumeName: '[^']+', mountPath: '([^']+)' \}`).FindAllStringSubmatch(block, -1) {
		out = append(out, k8sVolumeMount{MountPath: m[1]})
	}
	return out
}

// fillPlaceholders fills a manifest's placeholders as a user would: the
// Cloud Run project id and the Azure storage account (Azurite's).
func fillPlaceholders(s string) string {
	return strings.NewReplacer("PROJECT_ID", "my-project", "${storageAccount}", azurite.Account).Replace(s)
}

// dockerfile reads the directives of the final stage of a Dockerfile.
func dockerfile(t *testing.T, rel string) map[string][]string {
	t.Helper()
	d := map[string][]string{}
	text := strings.ReplaceAll(string(readDeploy(t, rel)), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		word, rest, _ := strings.Cut(line, " ")
		word = strings.ToUpper(word)
		if word == "FROM" {
			d = map[string][]string{} // keep the last stage only
		}
		d[word] = append(d[word], strings.TrimSpace(rest))
	}
	return d
}

func jsonArray(t *testing.T, src, s string) []string {
	t.Helper()
	var a []string
	if err := json.Unmarshal([]byte(s), &a); err != nil {
		t.Fatalf("%s: %q is not an exec-form JSON array: %v", src, s, err)
	}
	return a
}

func dockerEnv(d map[string][]string) map[string]string {
	env := map[string]string{}
	for _, e := range d["ENV"] {
		for _, kv := range strings.Fields(e) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
	}
	return env
}

func TestDeploySidecarDockerfile(t *testing.T) {
	d := dockerfile(t, "sidecar/Dockerfile")
	if u := d["USER"]; len(u) != 1 || u[0] != "65532:65532" {
		t.Errorf("sidecar Dockerfile: USER %v; want 65532:65532", u)
	}
	if ep := d["ENTRYPOINT"]; len(ep) != 1 || !slices.Equal(jsonArray(t, "ENTRYPOINT", ep[0]), []string{"/chio-agent"}) {
		t.Errorf("sidecar Dockerfile: ENTRYPOINT %v; want [\"/chio-agent\"]", ep)
	}
	if len(d["COPY"]) != 1 || !strings.HasSuffix(d["COPY"][0], " /chio-agent") {
		t.Errorf("sidecar Dockerfile: the binary is not copied to /chio-agent: %v", d["COPY"])
	}
	checkArgs(t, "sidecar Dockerfile CMD", jsonArray(t, "CMD", d["CMD"][0]))
	env := dockerEnv(d)
	names := make([]string, 0, len(env))
	for k := range env {
		names = append(names, k)
	}
	checkEnvNames(t, "sidecar Dockerfile", names, config.SidecarEnv)
	_, port := sidecarEndpoint(t, "sidecar Dockerfile", env)
	if e := d["EXPOSE"]; len(e) != 1 || e[0] != strconv.Itoa(port) {
		t.Errorf("sidecar Dockerfile: EXPOSE %v; the sidecar listens on %d", e, port)
	}
	hc := d["HEALTHCHECK"]
	if len(hc) != 1 || !strings.Contains(hc[0], " CMD ") {
		t.Fatalf("sidecar Dockerfile: HEALTHCHECK %v", hc)
	}
	_, cmd, _ := strings.Cut(hc[0], " CMD ")
	hcArgs := jsonArray(t, "HEALTHCHECK", cmd)
	if hcArgs[0] != "/chio-agent" || !slices.Equal(hcArgs[1:3], []string{"api", "health"}) {
		t.Errorf("sidecar Dockerfile: health check %v; want /chio-agent api health", hcArgs)
	}
	checkArgs(t, "sidecar Dockerfile HEALTHCHECK", hcArgs[1:])
	// The receipt log must be on the declared volume (read-only root).
	sink, _ := config.ReceiptPath(env[config.EnvReceiptSink])
	if v := d["VOLUME"]; len(v) != 1 || !strings.HasPrefix(sink, jsonArray(t, "VOLUME", v[0])[0]+"/") {
		t.Errorf("sidecar Dockerfile: receipt sink %s is not on the VOLUME %v", sink, v)
	}
}

func TestDeployNodeAgent(t *testing.T) {
	d := dockerfile(t, "node-agent/Dockerfile")
	if ep := d["ENTRYPOINT"]; len(ep) != 1 || !slices.Equal(jsonArray(t, "ENTRYPOINT", ep[0]), []string{"/chio-agent"}) {
		t.Errorf("node-agent Dockerfile: ENTRYPOINT %v", ep)
	}
	checkArgs(t, "node-agent Dockerfile CMD", jsonArray(t, "CMD", d["CMD"][0]))
	var names []string
	for k := range dockerEnv(d) {
		names = append(names, k)
	}
	checkEnvNames(t, "node-agent Dockerfile", names, config.NodeAgentEnv)
	// The DaemonSet, its ConfigMap and the uninstall Job: deploy_kubernetes_test.go.
}

func TestDeployKernelYAMLExample(t *testing.T) {
	cfg, err := config.Parse(readDeploy(t, "kernel.yaml"), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("deploy/kernel.yaml: %v", err)
	}
	if cfg.Sidecar.Upstream == "" || len(cfg.Agent.Workloads) == 0 {
		t.Fatalf("deploy/kernel.yaml should show both sections: %+v", cfg)
	}
	if _, err := hex.DecodeString(strings.Repeat("0", 64)); err != nil {
		t.Fatal(err)
	}
}

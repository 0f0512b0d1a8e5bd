package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/receipts"
)

// runSplit executes the command tree with args and returns standard output
// and standard error apart.
func runSplit(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	root := newRootCommand()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func walkCommands(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		walkCommands(sub, fn)
	}
}

// TestOneFlagPerConcept: the signing key was --key or --key-file, the log
// --receipts or --db, the socket --status-socket or --socket, the mode
// --receipt-mode or --mode, and verify's --key meant a public key. Every
// command now shows one name per concept; the old ones are hidden aliases.
func TestOneFlagPerConcept(t *testing.T) {
	retired := map[string]string{"db": "receipts", "socket": "status-socket", "mode": "receipt-mode", "key-file": "key"}
	walkCommands(newRootCommand(), func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if f.Hidden {
				return
			}
			if n, ok := retired[f.Name]; ok {
				t.Errorf("%s shows --%s; the concept's name is --%s", c.CommandPath(), f.Name, n)
			}
			if f.Name == "key" && !strings.Contains(f.Usage, "signing key") {
				t.Errorf("%s: --key is %q, not the signing key file", c.CommandPath(), f.Usage)
			}
		})
	})
	verify, _, _ := newRootCommand().Find([]string{"receipts", "verify"})
	if f := verify.Flags().Lookup("trusted-key"); f == nil {
		t.Error("receipts verify has no --trusted-key")
	}
	if f := verify.Flags().Lookup("key"); f == nil || !f.Hidden || f.Deprecated == "" {
		t.Error("receipts verify's old --key is not a hidden, deprecated alias")
	}
}

// TestDeprecatedSpellingsStillWork: scripts written against the old names
// keep working, with a warning naming the new one.
func TestDeprecatedSpellingsStillWork(t *testing.T) {
	db := cliLog(t, "12")
	pub := kernel.PublicKeyHex(cliKey().Public().(ed25519.PublicKey))
	for _, tc := range []struct {
		args []string
		warn string
	}{
		{[]string{"receipts", "list", "--db", db}, "--db has been deprecated, use --receipts"},
		{[]string{"receipts", "verify", "--db", db, "--key", pub}, "--key has been deprecated, use --trusted-key"},
		{[]string{"receipts", "verify", "--receipts", db, "--socket", filepath.Join(t.TempDir(), "none.sock")}, "--socket has been deprecated, use --status-socket"},
	} {
		out, err := run(t, tc.args...)
		if err != nil || !strings.Contains(out, tc.warn) {
			t.Errorf("%v: %v; output lacks %q:\n%s", tc.args, err, tc.warn, out)
		}
	}
	// The alias sets the same value: a wrong trusted key still fails.
	if _, err := run(t, "receipts", "verify", "--db", db, "--key", strings.Repeat("ab", 32)); exitCode(err) != exitVerifyFailed {
		t.Errorf("verify --key with another key: %v", err)
	}
	keyFile := filepath.Join(t.TempDir(), "k")
	if _, err := kernel.GenerateKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "receipts", "bench", "--db", filepath.Join(t.TempDir(), "b.db"), "--count", "3", "--writers", "1", "--key-file", keyFile, "--mode", "async")
	if err != nil || !strings.Contains(out, "async mode") || !strings.Contains(out, "--key-file has been deprecated") || !strings.Contains(out, "--mode has been deprecated") {
		t.Errorf("bench with old spellings: %v\n%s", err, out)
	}
}

// TestUseShowsOnlyRequiredFlags: a Use line names a flag outside [...] only
// when the command cannot run without it.
func TestUseShowsOnlyRequiredFlags(t *testing.T) {
	required := map[string]bool{"chio-agent policy eval --type": true, "chio-agent receipts bench --receipts": true,
		"chio-agent receipts import --receipts": true, "chio-agent receipts import --trusted-key": true,
		"chio-agent receipts collect --from": true, "chio-agent receipts collect --receipts": true, "chio-agent receipts collect --trusted-key": true,
		"chio-agent keys rotate --key": true}
	outside := regexp.MustCompile(`\[[^\]]*\]`)
	walkCommands(newRootCommand(), func(c *cobra.Command) {
		for _, m := range regexp.MustCompile(`--[a-z-]+`).FindAllString(outside.ReplaceAllString(c.Use, ""), -1) {
			if !required[c.CommandPath()+" "+m] {
				t.Errorf("%s: Use %q shows %s as required", c.CommandPath(), c.Use, m)
			}
		}
	})
}

// TestAgentCommandsAcceptConfig: every command that talks to a running
// agent finds its socket through kernel.yaml too.
func TestAgentCommandsAcceptConfig(t *testing.T) {
	root := newRootCommand()
	for _, path := range [][]string{{"status"}, {"uninstall"}, {"api", "health"}, {"receipts", "verify"}, {"receipts", "list"}, {"receipts", "show"},
		{"receipts", "tail"}, {"receipts", "export"}, {"receipts", "prove"}} {
		c, _, err := root.Find(path)
		if err != nil || c.Flags().Lookup("config") == nil {
			t.Errorf("%v has no --config", path)
		}
	}
	// status asks the socket kernel.yaml names.
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- agent.ServeStatus(ctx, sock, func() agent.Status { return agent.Status{Version: "from-config-socket"} }, nil, http.NotFoundHandler(), nil)
	}()
	t.Cleanup(func() { cancel(); <-done })
	cfg := filepath.Join(dir, "kernel.yaml")
	os.WriteFile(cfg, []byte("agent:\n  status_socket: "+sock+"\n"), 0o600)
	// Wait until the server answers (it starts in the background).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := agent.QueryStatus(ctx, sock); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("status server: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("status server never answered")
		}
	}
	out, _, err := runSplit(t, "status", "--json", "--config", cfg)
	if err != nil || !strings.Contains(out, "from-config-socket") {
		t.Fatalf("status --config: %v\n%s", err, out)
	}
	// The flag beats the file.
	other := filepath.Join(dir, "other.sock")
	if _, _, err := runSplit(t, "status", "--config", cfg, "--status-socket", other); !errors.Is(err, agent.ErrNotRunning) || !strings.Contains(err.Error(), other) {
		t.Fatalf("status --status-socket over --config: %v", err)
	}
}

// TestExecAndReadersShareTheDefaultLog: exec wrote ./chio-receipts.db while
// receipts verify looked in /var/lib/chio-agent: with neither told where,
// they now name the same file.
func TestExecAndReadersShareTheDefaultLog(t *testing.T) {
	t.Setenv(config.EnvReceiptSink, "")
	t.Setenv(config.EnvKernelConfigPath, "")
	nothing := func(string) (string, bool) { return "", false }
	c, err := config.Resolve(context.Background(), config.Flags{Policy: "/p.yaml", KeyFile: "/k"}, nodeDefaults("warn"), nothing)
	if err != nil {
		t.Fatal(err)
	}
	db := &dbOptions{lookup: nothing}
	if err := db.resolve(); err != nil {
		t.Fatal(err)
	}
	if c.ReceiptPath != db.path || db.path != defaultReceiptDB {
		t.Fatalf("exec writes %s, the readers read %s", c.ReceiptPath, db.path)
	}
	// And both follow CHIO_RECEIPT_SINK and kernel.yaml alike.
	dir := t.TempDir()
	cfg := filepath.Join(dir, "kernel.yaml")
	os.WriteFile(cfg, []byte("receipts: {sink: "+filepath.Join(dir, "r.db")+"}\n"), 0o600)
	db = &dbOptions{agentConfig: agentConfig{config: cfg}, lookup: nothing}
	if err := db.resolve(); err != nil || db.path != filepath.Join(dir, "r.db") {
		t.Fatalf("readers with --config: %s %v", db.path, err)
	}
}

// TestReceiptsShowIDPrefix: exec prints 12 characters of a receipt's id;
// show accepts them, and refuses a prefix several receipts share, naming
// them.
func TestReceiptsShowIDPrefix(t *testing.T) {
	db := cliLog(t, "40")
	e := storedReceipt(t, db, 7)
	out, err := run(t, "receipts", "show", e.ID[:12], "--receipts", db)
	if err != nil || !strings.Contains(out, `"seq": 7`) || !strings.Contains(out, e.ID) {
		t.Fatalf("show %s: %v\n%s", e.ID[:12], err, out)
	}
	// Some letter starts two of the 40 ids (a digit would name a seq).
	first := map[byte]int{}
	var shared byte
	l, _ := receipts.Open(db, receipts.Options{ReadOnly: true})
	l.Scan(context.Background(), receipts.Filter{}, func(e receipts.Entry) error {
		if c := e.ID[0]; c >= 'a' {
			first[c]++
			if first[c] == 2 && shared == 0 {
				shared = c
			}
		}
		return nil
	})
	if shared == 0 {
		t.Fatalf("no letter starts two of 40 ids: %v", first)
	}
	l.Close()
	_, err = run(t, "receipts", "show", string(shared), "--receipts", db)
	if !errors.Is(err, errAmbiguous) || !strings.Contains(err.Error(), "seq ") {
		t.Fatalf("show %c (shared by %d receipts): %v", shared, first[shared], err)
	}
	if _, err := run(t, "receipts", "show", "ffffffffffffzz", "--receipts", db); exitCode(err) != exitUsage {
		t.Fatalf("show of a non-hex id: %v", err)
	}
}

// TestPolicyEvalUnknownTypeIsUsageError: an unknown --type printed a deny
// and exited 0, so a typo looked like a policy decision.
func TestPolicyEvalUnknownTypeIsUsageError(t *testing.T) {
	path := writePolicy(t, "p.yaml", "hushspec: \"0.1.0\"\n")
	out, _, err := runSplit(t, "policy", "eval", path, "--type", "egres", "--target", "a.com")
	if exitCode(err) != exitUsage || out != "" || !strings.Contains(err.Error(), "egress") {
		t.Fatalf("eval --type egres: exit %d, %v, output %q", exitCode(err), err, out)
	}
	// Flags that changed nothing are gone rather than silently ignored.
	for _, flag := range []string{"--origin=provider=slack"} {
		if _, _, err := runSplit(t, "policy", "eval", path, "--type", "egress", "--target", "a.com", flag); exitCode(err) != exitUsage {
			t.Errorf("eval accepted %s, which the engine does not evaluate", flag)
		}
	}
}

// TestPolicyCheckWarnsUnenforcedExtensions: a policy using posture, origins
// or detection passed check silently though none of them is enforced.
func TestPolicyCheckWarnsUnenforcedExtensions(t *testing.T) {
	path := writePolicy(t, "p.yaml", "hushspec: \"0.1.0\"\nextensions:\n  posture: {initial: normal, states: {normal: {capabilities: [egress]}}}\n  origins: {default_behavior: deny}\n")
	out, warn, err := runSplit(t, "policy", "check", path)
	if err != nil || !strings.Contains(out, "ok: policy") {
		t.Fatalf("check: %v\n%s", err, out)
	}
	for _, ext := range []string{"extensions.origins is accepted but not enforced", "extensions.posture is accepted but only partly enforced"} {
		if !strings.Contains(warn, ext) {
			t.Errorf("no warning for %s:\n%s", ext, warn)
		}
	}
	plain := writePolicy(t, "q.yaml", "hushspec: \"0.1.0\"\n")
	if _, warn, err := runSplit(t, "policy", "check", plain); err != nil || warn != "" {
		t.Errorf("check of a policy without extensions: %v, %q", err, warn)
	}
}

// TestCompletionOffersEnumValues: completion offered files for every flag.
func TestCompletionOffersEnumValues(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"exec", "--receipt-mode", ""}, []string{"sync", "async"}},
		{[]string{"run", "--log-format", ""}, []string{"text", "json"}},
		{[]string{"policy", "eval", "p.yaml", "--type", ""}, actionTypes},
		{[]string{"receipts", "list", "--decision", ""}, []string{"allow", "deny", "none"}},
		{[]string{"api", "protect", "--log-level", ""}, []string{"debug", "info", "warn", "error"}},
	} {
		out, err := run(t, append([]string{cobra.ShellCompRequestCmd}, tc.args...)...)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w+"\n") {
				t.Errorf("completion of %v lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
}

// TestNodeLoggerFormatFromTheFirstLine: run's logger was made with text and
// switched to JSON after the receipt log had opened (and logged) with it.
func TestNodeLoggerFormatFromTheFirstLine(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k")
	if _, err := kernel.GenerateKeyFile(key); err != nil {
		t.Fatal(err)
	}
	policy := writePolicy(t, "p.yaml", "hushspec: \"0.1.0\"\n")
	var buf bytes.Buffer
	f := &nodeFlags{Flags: config.Flags{Policy: policy, KeyFile: key, Receipts: filepath.Join(dir, "r.db")}}
	s, err := f.resolve(context.Background(), "info", "json", &buf, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if _, ok := s.logger.Formatter.(*logrus.JSONFormatter); !ok {
		t.Fatalf("run's logger is %T when resolve returns", s.logger.Formatter)
	}
	if _, err := newLogger("info", "yaml", &buf); exitCode(err) != exitUsage {
		t.Fatalf("--log-format yaml: %v", err)
	}
}

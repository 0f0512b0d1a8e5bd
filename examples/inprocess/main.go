// Command inprocess shows the in-process shape of Chio: a trusted Go agent
// links the kernel and the receipt log and decides its own tool calls with
// a function call, no server in between.
//
//	go run ./examples/inprocess [-dir DIR]
//
// It writes a policy, a signing key and a receipt log under DIR (a temporary
// directory by default), decides three tool calls, prints each verdict with
// its receipt id, then reopens the log read-only and verifies it end to end.
//
// The agent's process holds the signing key in this shape, so the receipts
// prove what the kernel decided only as far as that process is trusted; the
// sidecar and the node agent keep the key away from the agent.
package main

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

const policy = `hushspec: "1.0.0"
name: inprocess-example
rules:
  tool_access:
    allow: [search_docs, read_file]
    block: [shell_exec]
    max_args_size: 4096
    default: block
`

func main() {
	dir := flag.String("dir", "", "directory for the policy, key and receipt log (default: a new temporary directory)")
	flag.Parse()
	if err := run(context.Background(), *dir, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "inprocess:", err)
		os.Exit(1)
	}
}

// run is the whole example; the test calls it and checks what it prints.
func run(ctx context.Context, dir string, out io.Writer) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "chio-inprocess-")
		if err != nil {
			return fmt.Errorf("make work directory: %w", err)
		}
		dir = d
	}
	policyPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, []byte(policy), 0o600); err != nil {
		return fmt.Errorf("write policy: %w", err)
	}
	p, err := hushspec.LoadFile(policyPath)
	if err != nil {
		return err
	}
	// A real agent loads a key it keeps (kernel.LoadSigningKey reads
	// CHIO_SIGNING_KEY or a key file); the example makes one.
	key, err := kernel.GenerateKeyFile(filepath.Join(dir, "kernel.key"))
	if err != nil {
		return err
	}
	k, err := kernel.New(kernel.Options{Policy: p, SigningKey: key})
	if err != nil {
		return err
	}
	logPath := filepath.Join(dir, "receipts.db")
	rlog, err := receipts.Open(logPath, receipts.Options{Key: key})
	if err != nil {
		return err
	}

	calls := []kernel.ToolCall{
		{ToolServer: "docs", ToolName: "search_docs", Arguments: json.RawMessage(`{"query":"receipts"}`)},
		{ToolServer: "local", ToolName: "shell_exec", Arguments: json.RawMessage(`{"cmd":"rm -rf /"}`)},
		{ToolServer: "local", ToolName: "send_email", Arguments: json.RawMessage(`{"to":"someone@example.test"}`)},
	}
	for _, call := range calls {
		outcome, receipt, err := k.EvaluateToolCall(ctx, call)
		if err != nil {
			rlog.Close()
			return fmt.Errorf("evaluate %s: %w", call.ToolName, err) // fail closed: do not run the tool
		}
		// The decision counts once its receipt is durable (sync mode).
		if _, err := rlog.AppendReceipt(ctx, &receipt); err != nil {
			rlog.Close()
			return fmt.Errorf("record %s: %w", call.ToolName, err)
		}
		// Only an allow verdict lets the agent run the tool.
		fmt.Fprintf(out, "%-12s %-5s receipt %s (%s)\n", call.ToolName, outcome.Verdict, receipt.ID[:16], outcome.Reason)
	}
	if err := rlog.Close(); err != nil { // commits and seals the tail with a checkpoint
		return err
	}

	ro, err := receipts.Open(logPath, receipts.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer ro.Close()
	rep, err := ro.Verify(ctx, receipts.VerifyOptions{TrustedKey: kernel.PublicKeyHex(key.Public().(ed25519.PublicKey))})
	if err != nil {
		return fmt.Errorf("verify receipt log: %w", err)
	}
	fmt.Fprintf(out, "receipt log %s verifies: %d receipts verified, %d checkpoints\n", logPath, rep.Verified, rep.Checkpoints)
	return nil
}

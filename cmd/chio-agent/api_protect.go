package main

import (
	"net"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent/sidecar"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

// apiProtectOptions are the flags of `api protect`. Each overrides its
// CHIO_* variable, which overrides kernel.yaml.
type apiProtectOptions struct {
	flags     config.SidecarFlags
	readyFile string
}

func (o *apiProtectOptions) AddFlags(fs *pflag.FlagSet) {
	f := &o.flags
	fs.StringVar(&f.Upstream, "upstream", "", "base URL of the API to protect (http or https; default the config's sidecar.upstream)")
	fs.StringVar(&f.Spec, "spec", "", "the API's OpenAPI 3.x document, YAML or JSON (default the config's sidecar.spec)")
	fs.StringVar(&f.Listen, "listen", "", "address to serve on (default $"+config.EnvListenAddr+", else the config's, else "+config.DefaultSidecarListen+")")
	fs.StringVar(&f.Config, "config", "", "kernel.yaml (default $"+config.EnvKernelConfigPath+")")
	fs.StringVar(&f.Policy, "policy", "", "HushSpec policy: a path, file:// or http(s):// URL (default $"+config.EnvPolicySource+", else the config's)")
	fs.StringVar(&f.Receipts, "receipts", "", "receipt sink: the bbolt log (a path or file:// URL) or a sink to ship to beside it: nats://host:port[,...], dynamodb://TABLE, s3://, gs://, azblob:// (default $"+config.EnvReceiptSink+", else the config's, else ./"+config.DefaultSidecarReceipts+")")
	fs.StringVar(&f.ReceiptMode, "receipt-mode", "", "sync (a request goes upstream once its receipt is durable; default) or async")
	fs.StringVar(&f.KeyFile, "key", "", "Ed25519 signing key `file` written by chio-agent keygen (default $"+config.EnvSigningKey+", a hex seed, else the config's signing_key)")
	fs.StringVar(&f.LogLevel, "log-level", "", "debug, info, warn or error (default $"+config.EnvLogLevel+", else the config's, else info)")
	fs.StringVar(&f.HealthPath, "health-path", "", "readiness endpoint (default $"+config.EnvHealthPath+", else the config's, else "+config.DefaultHealthPath+")")
	fs.StringVar(&f.ToolServer, "tool-server", "", "receipts' tool_server and the server_id capabilities must grant (default the upstream's origin)")
	fs.Int64Var(&f.MaxBodyBytes, "max-body-bytes", 0, "largest request body forwarded (default the config's, else 10 MiB)")
	fs.StringVar(&o.readyFile, "ready-file", "", "write the listening address to this file once serving")
}

func newAPIProtectCommand() *cobra.Command {
	o := &apiProtectOptions{}
	cmd := &cobra.Command{
		Use:   "protect [flags]",
		Short: "Reverse-proxy an HTTP API through the kernel",
		Long: `protect serves a reverse proxy in front of an HTTP API. Each request is matched
to an operation of the OpenAPI spec; its operationId is the tool name the
policy's tool_access rules decide on. Allowed requests are forwarded, others
refused with 403 and a JSON body naming the receipt; every response to a
protected request carries X-Chio-Receipt-Id. Requests matching no operation
are refused unless the policy lists chio_unmatched_route in tool_access.allow.

When CHIO_TRUSTED_ISSUER_KEY(S) name capability issuers, each request must
carry an X-Chio-Capability token from one of them granting the operation.

Endpoints: GET /chio/health (readiness), GET /chio/live, POST /chio/evaluate,
POST /chio/verify, and, with CHIO_SIDECAR_CONTROL_TOKEN set, GET
/chio/admin/status and POST /chio/admin/reload (Authorization: Bearer TOKEN).

Flags override the CHIO_* variables (CHIO_LISTEN_ADDR, CHIO_HEALTH_PATH,
CHIO_KERNEL_CONFIG_PATH, CHIO_POLICY_SOURCE, CHIO_RECEIPT_SINK,
CHIO_SIGNING_KEY, CHIO_CAPABILITY_AUTHORITY_URL, CHIO_LOG_LEVEL,
CHIO_TRUSTED_ISSUER_KEY, CHIO_TRUSTED_ISSUER_KEYS, CHIO_SIDECAR_CONTROL_TOKEN,
and the CHIO_SESSION_* limits), which override kernel.yaml. The start fails,
saying why, when the policy, the spec, the key, the receipt log or the
session journal cannot be loaded. See docs/sidecar.md.

A request naming a session (the Chio-Session-Id header, or its capability
token when tokens are in use) is journaled in the session journal beside the
receipt log and held to the session limits (docs/sessions.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := config.ResolveSidecar(o.flags, os.LookupEnv)
			if err != nil {
				return err
			}
			logger, err := newLogger(set.LogLevel, "json", cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			var readyErr error
			return firstErr(sidecar.Run(cmd.Context(), sidecar.Options{
				Settings: set,
				Version:  version,
				Logger:   logger,
				Ready: func(addr net.Addr) {
					if o.readyFile != "" {
						readyErr = os.WriteFile(o.readyFile, []byte(addr.String()+"\n"), 0o644)
						if readyErr != nil {
							logger.WithError(readyErr).Error("write ready file")
						}
					}
				},
			}), readyErr)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

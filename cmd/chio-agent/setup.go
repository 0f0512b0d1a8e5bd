package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/internal/tuning"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

// The CHIO_* environment contract, as far as the node agent uses it.
const (
	envKernelConfig = "CHIO_KERNEL_CONFIG_PATH"
	envPolicySource = "CHIO_POLICY_SOURCE"
	envReceiptSink  = "CHIO_RECEIPT_SINK"
	envLogLevel     = "CHIO_LOG_LEVEL"
)

// nodeFlags are the flags `exec` and `run` share. Flags override the CHIO_*
// variables, which override kernel.yaml.
type nodeFlags struct {
	config   string
	policy   string
	receipts string
	keyFile  string
	mode     string
	logLevel string
}

func (f *nodeFlags) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "kernel.yaml (default $"+envKernelConfig+")")
	fs.StringVar(&f.policy, "policy", "", "HushSpec policy: a path, file:// or http(s):// URL (default $"+envPolicySource+", else the config's)")
	fs.StringVar(&f.receipts, "receipts", "", "receipt log file (default $"+envReceiptSink+", else the config's)")
	fs.StringVar(&f.keyFile, "key", "", "Ed25519 signing key `file` written by chio-agent keygen (default $CHIO_SIGNING_KEY, a hex seed, else the config's signing_key)")
	fs.StringVar(&f.mode, "receipt-mode", "", "sync (a decision takes effect once its receipt is durable; default) or async")
	fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (default $"+envLogLevel+", else warn for exec, info for run)")
}

// nodeSetup is everything `exec` and `run` open before protecting anything.
type nodeSetup struct {
	cfg          *config.Config
	policy       *hushspec.Policy
	policySource string
	key          ed25519.PrivateKey
	log          *receipts.Log
	logger       *logrus.Logger
	agentOpts    agent.Options
}

// resolve merges flags, environment and kernel.yaml, and opens what they
// name. It fails closed: no policy, no key or no log stops the start.
func (f *nodeFlags) resolve(ctx context.Context, defaultReceipts, defaultLevel string, lookup func(string) (string, bool)) (*nodeSetup, error) {
	s := &nodeSetup{cfg: &config.Config{}}
	cfgPath := f.config
	if cfgPath == "" {
		cfgPath, _ = lookup(envKernelConfig)
	}
	if cfgPath != "" {
		c, err := config.LoadContext(ctx, cfgPath, lookup)
		if err != nil {
			return nil, err
		}
		s.cfg = c
	}
	pick := func(flag, env, file, def string) string {
		if flag != "" {
			return flag
		}
		if v, ok := lookup(env); ok && v != "" {
			return v
		}
		if file != "" {
			return file
		}
		return def
	}
	level := pick(f.logLevel, envLogLevel, s.cfg.LogLevel, defaultLevel)
	lvl, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	s.logger = logrus.New()
	s.logger.SetLevel(lvl)
	s.logger.SetOutput(os.Stderr)

	s.policySource = pick(f.policy, envPolicySource, s.cfg.Policy, "")
	if s.policySource == "" {
		return nil, fmt.Errorf("no policy: give --policy, $%s or policy: in kernel.yaml", envPolicySource)
	}
	s.policy, err = config.LoadPolicy(ctx, s.policySource, s.cfg.PanicFile)
	if err != nil {
		return nil, err
	}
	// --key wins (flags override variables), then CHIO_SIGNING_KEY, then
	// kernel.yaml's signing_key.
	if f.keyFile != "" {
		s.key, err = kernel.LoadKeyFile(f.keyFile)
	} else {
		s.key, err = kernel.LoadSigningKey(kernel.LookupEnv(lookup), s.cfg.SigningKey)
	}
	if err != nil {
		return nil, fmt.Errorf("%w (chio-agent keygen --out FILE writes one; then --key FILE)", err)
	}
	sink := pick(f.receipts, envReceiptSink, s.cfg.Receipts.Sink, defaultReceipts)
	path, err := config.ReceiptPath(sink)
	if err != nil {
		return nil, err
	}
	mode, err := receipts.ParseMode(pick(f.mode, "", s.cfg.Receipts.Mode, "sync"))
	if err != nil {
		return nil, err
	}
	s.log, err = receipts.Open(path, receipts.Options{
		Key:             s.key,
		Mode:            mode,
		CheckpointEvery: s.cfg.Receipts.CheckpointEvery,
		CheckpointIdle:  s.cfg.Receipts.CheckpointIdle.D(0),
		Logger:          s.logger,
	})
	if err != nil {
		return nil, err
	}

	ac := s.cfg.Agent
	s.agentOpts = agent.Options{
		Policy:       s.policy,
		PolicySource: s.policySource,
		Key:          s.key,
		Log:          s.log,
		ListenPort:   ac.ListenPort,
		Logger:       s.logger,
		Timeouts: agent.Timeouts{
			FirstBytes: ac.Timeouts.FirstBytes.D(0),
			Idle:       ac.Timeouts.Idle.D(0),
			Total:      ac.Timeouts.Total.D(0),
			Dial:       ac.Timeouts.Dial.D(0),
		},
		Limits: agent.Limits{
			HeadBytes:          ac.Limits.HeadBytes,
			PendingPerWorkload: ac.Limits.PendingPerWorkload,
			Pending:            ac.Limits.Pending,
			RelaysPerWorkload:  ac.Limits.RelaysPerWorkload,
			Relays:             ac.Limits.Relays,
		},
	}
	tuning.LimitMemory(os.Getenv, s.agentOpts.Limits.MemoryCeiling())
	for _, r := range ac.Resolvers {
		s.agentOpts.Resolvers = append(s.agentOpts.Resolvers, netip.MustParseAddrPort(r)) // validated by config
	}
	if len(ac.Hosts) > 0 {
		s.agentOpts.Hosts = map[string][]netip.Addr{}
		for name, as := range ac.Hosts {
			for _, a := range as {
				s.agentOpts.Hosts[strings.ToLower(name)] = append(s.agentOpts.Hosts[strings.ToLower(name)], netip.MustParseAddr(a))
			}
		}
	}
	return s, nil
}

func (s *nodeSetup) close() error {
	if s.log == nil {
		return nil
	}
	return s.log.Close()
}

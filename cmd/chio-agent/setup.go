package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/miekg/dns"
	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/agent"
	"github.com/backbay-labs/chio-agent/internal/dnsproxy"
	"github.com/backbay-labs/chio-agent/internal/tuning"
	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
	"github.com/backbay-labs/chio-agent/receipts"
)

// nodeFlags are the flags `exec` and `run` share. Flags override the CHIO_*
// variables, which override kernel.yaml (config.Resolve, the one rule both
// shapes follow).
type nodeFlags struct {
	config.Flags
	// logFormat is text or json; "" takes the command's default.
	logFormat string
}

func (f *nodeFlags) AddFlags(fs *pflag.FlagSet) {
	addConfigFlag(fs, &f.Config)
	fs.StringVar(&f.Policy, "policy", "", "HushSpec policy: a path, file:// or http(s):// URL (default $"+config.EnvPolicySource+", else the config's)")
	addReceiptsFlag(fs, &f.Receipts, "", "receipt sink: the bbolt log (a path or file:// URL) or a sink to ship to beside it: nats://host:port[,...], dynamodb://TABLE, s3://, gs://, azblob:// (default $"+config.EnvReceiptSink+", else the config's, else "+defaultReceiptDB+")")
	addKeyFlag(fs, &f.KeyFile)
	addReceiptModeFlag(fs, &f.ReceiptMode)
	fs.StringVar(&f.LogLevel, "log-level", "", "debug, info, warn or error (default $"+config.EnvLogLevel+", else the config's, else warn for exec, info for run)")
	fs.StringVar(&f.logFormat, "log-format", "", "text or json (default text for exec, json for run)")
}

// nodeSetup is everything `exec` and `run` open before protecting anything.
type nodeSetup struct {
	cfg          *config.Config
	cfgPath      string
	policy       *hushspec.Policy
	policySource string
	key          ed25519.PrivateKey
	log          *receipts.Log
	logger       *logrus.Logger
	shipping     *shipping
	agentOpts    agent.Options

	// policyWatch loads the policy, at start and on reloads, and polls an
	// object store source for changes (run).
	policyWatch *config.PolicyWatch
}

// nodeDefaults are what run and exec use when nothing names a setting: the
// receipt log is the one the receipt readers look for.
func nodeDefaults(level string) config.Defaults {
	return config.Defaults{Receipts: defaultReceiptDB, LogLevel: level}
}

// newLogger makes the logger of a command before anything logs, so that its
// every line, the first ones included, has the format chosen.
func newLogger(level, format string, out io.Writer) (*logrus.Logger, error) {
	lvl, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	l := logrus.New()
	l.SetLevel(lvl)
	l.SetOutput(out)
	switch format {
	case "json":
		l.SetFormatter(&logrus.JSONFormatter{})
	case "text":
		l.SetFormatter(&logrus.TextFormatter{})
	default:
		return nil, usageErrorf("--log-format %q: want text or json", format)
	}
	return l, nil
}

// resolve merges flags, environment and kernel.yaml, and opens what they
// name. It fails closed: no policy, no key or no log stops the start.
func (f *nodeFlags) resolve(ctx context.Context, defaultLevel, defaultFormat string, stderr io.Writer, lookup func(string) (string, bool)) (*nodeSetup, error) {
	c, err := config.Resolve(ctx, f.Flags, nodeDefaults(defaultLevel), lookup)
	if err != nil {
		return nil, err
	}
	s := &nodeSetup{cfg: c.Config, cfgPath: c.ConfigPath, policySource: c.PolicySource}
	if s.logger, err = newLogger(c.LogLevel, config.Pick(nil, f.logFormat, "", "", defaultFormat), stderr); err != nil {
		return nil, err
	}
	if s.policyWatch, err = c.OpenPolicy(); err != nil {
		return nil, err
	}
	s.policy, err = s.policyWatch.Load(ctx)
	if err != nil {
		return nil, err
	}
	if s.key, err = c.SigningKey(); err != nil {
		return nil, fmt.Errorf("%w (chio-agent keygen --out FILE writes one; then --key FILE)", err)
	}
	mode, err := receipts.ParseMode(c.ReceiptMode)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(c.ReceiptPath), 0o700); err != nil {
		return nil, fmt.Errorf("receipt log directory: %w", err)
	}
	s.log, err = receipts.Open(c.ReceiptPath, receipts.Options{
		Key:             s.key,
		Mode:            mode,
		CheckpointEvery: c.CheckpointEvery,
		CheckpointIdle:  c.CheckpointIdle,
		Logger:          s.logger,
	})
	if errors.Is(err, receipts.ErrLocked) {
		// run and exec share a default log; a running agent holds it.
		return nil, fmt.Errorf("%w (is an agent running with it? give this command its own --receipts)", err)
	}
	if err != nil {
		return nil, err
	}
	if s.shipping, err = startShipping(s.log, c, s.logger); err != nil {
		s.log.Close()
		return nil, err
	}

	ac := s.cfg.Agent
	s.agentOpts = agent.Options{
		Policy:       s.policy,
		PolicySource: s.policySource,
		Key:          s.key,
		Log:          s.log,
		Shipper:      s.shipping.shipper(),
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
	tuning.Datapath(os.Getenv)
	for _, r := range ac.Resolvers {
		s.agentOpts.Resolvers = append(s.agentOpts.Resolvers, netip.MustParseAddrPort(r)) // validated by config
	}
	if d := ac.DNS; d.ProxyOn() {
		s.agentOpts.DNSProxy = &dnsproxy.Options{RefuseOtherTypes: d.RefuseOtherTypes, Rate: d.Rate, Burst: d.Burst,
			DistinctNames: d.DistinctNames, NameWindow: d.NameWindow.D(0), TTLFloor: d.TTLFloor.D(0), TTLCap: d.TTLCap.D(0)}
		if d.BlockRcode == "refused" {
			s.agentOpts.DNSProxy.BlockRcode = dns.RcodeRefused
		}
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

// resolvConf is where defaultResolvers reads the system's nameservers.
const resolvConf = "/etc/resolv.conf"

// defaultResolvers lets the workloads reach the nameservers of the
// resolv.conf at path (port 53) when kernel.yaml names no agent.resolvers,
// so that they resolve names as they would unprotected while the rest of
// their UDP stays refused. exec always takes them; run does with a
// kubernetes: section, where the kubelet writes into the agent's resolv.conf
// (dnsPolicy ClusterFirstWithHostNet, deploy/kubernetes) the cluster DNS
// Service that every pod's resolv.conf names too.
func (s *nodeSetup) defaultResolvers(path string) {
	if len(s.agentOpts.Resolvers) > 0 {
		return
	}
	rs, err := config.SystemResolvers(path)
	if err != nil {
		s.logger.WithError(err).Warn("no DNS resolvers: the workloads' UDP is refused, DNS included")
		return
	}
	s.agentOpts.Resolvers = rs
	s.logger.WithField("resolvers", rs).Infof("agent.resolvers is empty: workloads may reach the nameservers of %s", path)
}

func (s *nodeSetup) close() error {
	if s.policyWatch != nil {
		s.policyWatch.Close()
	}
	if s.log == nil {
		return nil
	}
	s.shipping.stop(s.log)
	s.shipping = nil
	return s.log.Close()
}

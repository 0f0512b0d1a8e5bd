package config

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/receipts/sink"
)

// Flags are the command line values every shape (node agent and sidecar)
// shares; "" means not given.
type Flags struct {
	// Config is kernel.yaml's path (--config).
	Config string
	// Policy is the policy source (--policy).
	Policy string
	// Receipts is the receipt sink: a path, file://PATH, nats:// URLs or
	// a store sink URL (dynamodb://, s3://, gs://, azblob://) (--receipts).
	Receipts string
	// ReceiptMode is sync or async (--receipt-mode).
	ReceiptMode string
	// KeyFile is the signing key file (--key).
	KeyFile string
	// LogLevel is logrus's level name (--log-level).
	LogLevel string
}

// Defaults are the values a shape uses when neither a flag, a variable nor
// kernel.yaml names one.
type Defaults struct {
	// Receipts is the receipt log path.
	Receipts string
	// LogLevel is logrus's level name.
	LogLevel string
}

// Common is what both shapes resolve alike: flags override the CHIO_*
// environment, which overrides kernel.yaml, which overrides the defaults.
type Common struct {
	// ConfigPath is the kernel.yaml read, or "" when none was.
	ConfigPath string
	// Config is kernel.yaml as read, or an empty Config when none was.
	// Never nil.
	Config *Config
	// PolicySource is a path, file:// or http(s):// URL, or an s3://,
	// gs:// or azblob:// object (scheme and syntax checked).
	PolicySource string
	// PolicyWatchInterval is how often an object store policy is checked
	// for a change; 0 means policysource.DefaultWatchInterval.
	PolicyWatchInterval time.Duration
	// PanicFile is the HushSpec panic sentinel, or "".
	PanicFile string
	// ReceiptPath is the bbolt file of the receipt log.
	ReceiptPath string
	// ShipServers are the NATS servers sealed batches are shipped to
	// (Config.Receipts.NATS says how); nil when the sink is local.
	ShipServers []string
	// ShipStore is the store sink URL sealed batches are put to
	// (dynamodb://, s3://, gs://, azblob://; Config.Receipts.Store says
	// how); "" when the sink is local or NATS.
	ShipStore string
	// ReceiptMode is sync or async.
	ReceiptMode string
	// CheckpointEvery and CheckpointIdle tune checkpoints; zero means the
	// receipt log's defaults.
	CheckpointEvery int
	CheckpointIdle  time.Duration
	// KeyFile is the signing key file, set when --key or, with no
	// CHIO_SIGNING_KEY, kernel.yaml's signing_key chose it.
	KeyFile string
	// KeyFromFlag says --key named KeyFile.
	KeyFromFlag bool
	// KeySeed is CHIO_SIGNING_KEY's hex seed, set only when no --key was
	// given. Secret: never log it.
	KeySeed string
	// LogLevel is logrus's level name, checked.
	LogLevel string
}

// Env reads one CHIO_* variable, trimmed; unset and empty are alike.
func Env(lookup func(string) (string, bool), name string) string {
	if lookup == nil || name == "" {
		return ""
	}
	v, _ := lookup(name)
	return strings.TrimSpace(v)
}

// Pick is the one precedence rule of every setting: the flag, else the
// environment variable env (when it has one), else kernel.yaml's value, else
// def.
func Pick(lookup func(string) (string, bool), flag, env, file, def string) string {
	return first(flag, Env(lookup, env), file, def)
}

// ConfigPath is the kernel.yaml a command reads: --config, else
// CHIO_KERNEL_CONFIG_PATH, else none ("").
func ConfigPath(flag string, lookup func(string) (string, bool)) string {
	return Pick(lookup, flag, EnvKernelConfigPath, "", "")
}

// Resolve merges flags, the environment and kernel.yaml (named by --config
// or CHIO_KERNEL_CONFIG_PATH) into the settings both shapes share, and
// checks their syntax. Nothing is opened but kernel.yaml. It fails closed:
// an unreadable kernel.yaml, no policy, no signing key, a scheme this build
// cannot use or a malformed value stops the start, saying which.
func Resolve(ctx context.Context, f Flags, d Defaults, lookup func(string) (string, bool)) (*Common, error) {
	c := &Common{Config: &Config{}}
	c.ConfigPath = ConfigPath(f.Config, lookup)
	if c.ConfigPath != "" {
		cfg, err := LoadContext(ctx, c.ConfigPath, lookup)
		if err != nil {
			return nil, err
		}
		c.Config = cfg
	}
	cfg := c.Config

	c.LogLevel = Pick(lookup, f.LogLevel, EnvLogLevel, cfg.LogLevel, first(d.LogLevel, "info"))
	if _, err := logrus.ParseLevel(c.LogLevel); err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}

	c.PolicySource = Pick(lookup, f.Policy, EnvPolicySource, cfg.Policy, "")
	if c.PolicySource == "" {
		return nil, fmt.Errorf("no policy: give --policy, $%s or policy: in kernel.yaml", EnvPolicySource)
	}
	if err := CheckPolicyScheme(c.PolicySource); err != nil {
		return nil, err
	}
	c.PanicFile = cfg.PanicFile
	if v := Env(lookup, EnvPolicyWatchInterval); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%s: %q is not a positive duration like 30s", EnvPolicyWatchInterval, v)
		}
		c.PolicyWatchInterval = d
	} else {
		c.PolicyWatchInterval = cfg.PolicyWatchInterval.D(0)
	}

	sinkURL := Pick(lookup, f.Receipts, EnvReceiptSink, cfg.Receipts.Sink, "")
	path, servers, err := ResolveSink(sinkURL, &cfg.Receipts, d.Receipts)
	if err != nil {
		return nil, err
	}
	c.ReceiptPath, c.ShipServers = path, servers
	if sink.IsStore(sinkURL) {
		c.ShipStore = sinkURL
	}
	// No variable names the mode: a flag, else kernel.yaml, else sync.
	c.ReceiptMode = Pick(lookup, f.ReceiptMode, "", cfg.Receipts.Mode, "sync")
	if c.ReceiptMode != "sync" && c.ReceiptMode != "async" {
		return nil, fmt.Errorf("receipt mode %q is neither sync nor async", c.ReceiptMode)
	}
	c.CheckpointEvery = cfg.Receipts.CheckpointEvery
	c.CheckpointIdle = cfg.Receipts.CheckpointIdle.D(0)

	// The key follows the same rule: --key, else CHIO_SIGNING_KEY (the hex
	// seed itself), else kernel.yaml's signing_key file.
	switch seed := Env(lookup, EnvSigningKey); {
	case f.KeyFile != "":
		c.KeyFile, c.KeyFromFlag = f.KeyFile, true
	case seed != "":
		if _, err := kernel.ParseSeedHex(seed); err != nil {
			return nil, fmt.Errorf("%s: %w", EnvSigningKey, err)
		}
		c.KeySeed = seed
	case cfg.SigningKey != "":
		c.KeyFile = cfg.SigningKey
	default:
		return nil, fmt.Errorf("%w: give --key FILE, set %s or signing_key: in kernel.yaml (chio-agent keygen --out FILE writes one)", kernel.ErrNoSigningKey, EnvSigningKey)
	}
	return c, nil
}

// SigningKey loads the key Resolve chose: the seed when one is set, else
// the key file; neither is ErrNoSigningKey.
func (c *Common) SigningKey() (ed25519.PrivateKey, error) {
	if c.KeySeed == "" && c.KeyFile == "" {
		return nil, fmt.Errorf("load signing key: %w", kernel.ErrNoSigningKey)
	}
	if c.KeySeed != "" {
		k, err := kernel.ParseSeedHex(c.KeySeed)
		if err != nil {
			return nil, fmt.Errorf("load signing key from %s: %w", EnvSigningKey, err)
		}
		return k, nil
	}
	return kernel.LoadKeyFile(c.KeyFile)
}

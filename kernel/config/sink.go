package config

import (
	"fmt"
	"strings"

	"github.com/backbay-labs/chio-agent/receipts/ship"
	"github.com/backbay-labs/chio-agent/receipts/sink"
)

// StoreSink configures shipping to a store sink (receipts.store), used when
// receipts.sink is dynamodb://TABLE, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX
// or azblob://ACCOUNT/CONTAINER/PREFIX. Credentials come from each cloud
// SDK's default chain, never from kernel.yaml.
type StoreSink struct {
	// MaxBacklog is the unshipped receipts past which the shipper raises
	// its alarm; decisions go on and every receipt stays in the local
	// log. Default 1000000.
	MaxBacklog uint64 `yaml:"max_backlog"`
	// Window is the most batches being put at once. Default 16; 1 puts one
	// batch at a time.
	Window int `yaml:"window"`
	// CreateTable lets a dynamodb:// sink create its table (with its
	// indexes, on-demand capacity) when missing. Default false: the
	// table must exist.
	CreateTable bool `yaml:"create_table"`
}

// NATS configures shipping receipts to NATS JetStream (receipts.nats),
// used when receipts.sink is a nats:// or tls:// URL list.
type NATS struct {
	// Stream is the JetStream stream (created if missing). Default
	// CHIO_RECEIPTS.
	Stream string `yaml:"stream"`
	// Replicas of a created stream. Default 3, or the cluster's server
	// count when smaller.
	Replicas int `yaml:"replicas"`
	// MaxBacklog is the unshipped receipts past which the shipper raises
	// its alarm (status error, metric); decisions go on and every receipt
	// stays in the local log. Default 1000000.
	MaxBacklog uint64 `yaml:"max_backlog"`
	// Window is the most batches in flight (published, ack awaited).
	// Default 16; 1 ships one batch at a time.
	Window int `yaml:"window"`
	// At most one credential, each from a file or from the environment
	// variable named: a token, an NKey user seed, or a .creds file (user
	// JWT and seed). Default none.
	TokenFile string `yaml:"token_file"`
	TokenEnv  string `yaml:"token_env"`
	NKeyFile  string `yaml:"nkey_seed_file"`
	NKeyEnv   string `yaml:"nkey_seed_env"`
	CredsFile string `yaml:"creds_file"`
	CredsEnv  string `yaml:"creds_env"`
	// CAFile is the CA bundle tls:// servers are checked against. Default
	// the system's.
	CAFile string `yaml:"ca_file"`
}

// Credentials are n's credentials as the shipper takes them.
func (n *NATS) Credentials() ship.Credentials {
	return ship.Credentials{TokenFile: n.TokenFile, TokenEnv: n.TokenEnv, NKeyFile: n.NKeyFile,
		NKeyEnv: n.NKeyEnv, CredsFile: n.CredsFile, CredsEnv: n.CredsEnv}
}

// IsNATSSink says sink names NATS servers (nats:// or tls://).
func IsNATSSink(sink string) bool {
	return strings.HasPrefix(sink, "nats://") || strings.HasPrefix(sink, "tls://")
}

// NATSServers splits a nats sink into its server URLs: a comma-separated
// list, each nats://host:port or tls://host:port; the scheme may be given
// once, in front ("nats://a:4222,b:4222").
func NATSServers(sink string) ([]string, error) {
	scheme, rest, _ := strings.Cut(sink, "://")
	var out []string
	for _, s := range strings.Split(rest, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil, fmt.Errorf("receipt sink %q: an empty server in the list", redactSink(sink))
		}
		if !strings.Contains(s, "://") {
			s = scheme + "://" + s
		}
		out = append(out, s)
	}
	if err := ship.CheckServers(out); err != nil {
		return nil, fmt.Errorf("receipt sink: %w", err)
	}
	return out, nil
}

// redactSink hides anything before an @ (credentials do not belong in a
// sink, and an error must not repeat them).
func redactSink(s string) string {
	if i := strings.LastIndex(s, "@"); i >= 0 {
		if j := strings.Index(s, "://"); j >= 0 && j < i {
			return s[:j+3] + "REDACTED" + s[i:]
		}
	}
	return s
}

// ResolveSink resolves the receipt sink and the local log: sink is the
// flag, else CHIO_RECEIPT_SINK, else receipts.sink; the local log is a
// local sink itself, else receipts.path, else def. A nats sink gives the
// servers to ship to; a store sink (sink.IsStore) is checked, and ships
// beside the local log as a nats one does; a local sink and a
// receipts.path that disagree are refused (which file would the log be?).
// Settings of a sink other than the one named (receipts.nats,
// receipts.store) are refused.
func ResolveSink(url string, r *Receipts, def string) (path string, servers []string, err error) {
	store := sink.IsStore(url)
	switch {
	case store && r.NATS != nil:
		return "", nil, fmt.Errorf("receipt sink %q is a store, but receipts.nats is set (receipts.store configures a store sink)", url)
	case !store && r.Store != nil:
		return "", nil, fmt.Errorf("receipt sink %q is no dynamodb://, s3://, gs:// or azblob:// URL, but receipts.store is set", url)
	case store:
		err = sink.Check(url)
	case IsNATSSink(url):
		servers, err = NATSServers(url)
	}
	if err != nil {
		return "", nil, err
	}
	if store || servers != nil {
		path, err = ReceiptPath(first(r.Path, def))
		if err != nil {
			return "", nil, fmt.Errorf("receipts.path: %w", err)
		}
		return path, servers, nil
	}
	if r.NATS != nil {
		return "", nil, fmt.Errorf("receipt sink %q is no nats:// or tls:// URL, but receipts.nats is set", url)
	}
	path, err = ReceiptPath(first(url, r.Path, def))
	if err != nil {
		return "", nil, err
	}
	if url != "" && r.Path != "" {
		p2, err := ReceiptPath(r.Path)
		if err != nil {
			return "", nil, fmt.Errorf("receipts.path: %w", err)
		}
		if p2 != path {
			return "", nil, fmt.Errorf("receipt sink names the local log %s but receipts.path names %s", path, p2)
		}
	}
	return path, nil, nil
}

// ShipOptions are the shipper's options for c's NATS or store sink; ok is
// false when the sink is local. The caller adds a logger.
func (c *Common) ShipOptions() (o ship.Options, ok bool) {
	if c.ShipStore != "" {
		s := c.Config.Receipts.Store
		if s == nil {
			s = &StoreSink{}
		}
		return ship.Options{StoreURL: c.ShipStore, CreateTable: s.CreateTable, MaxBacklog: s.MaxBacklog, Window: s.Window}, true
	}
	if len(c.ShipServers) == 0 {
		return ship.Options{}, false
	}
	n := c.Config.Receipts.NATS
	if n == nil {
		n = &NATS{}
	}
	return ship.Options{Servers: c.ShipServers, Credentials: n.Credentials(), CAFile: n.CAFile,
		Stream: n.Stream, Replicas: n.Replicas, MaxBacklog: n.MaxBacklog, Window: n.Window}, true
}

package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/receipts/central"
	"github.com/backbay-labs/chio-agent/receipts/collect"
	"github.com/backbay-labs/chio-agent/receipts/ship"
)

type collectOptions struct {
	from     string
	receipts string
	trusted  []string
	// nats holds the credentials and stream as kernel.yaml's receipts.nats
	// takes them.
	nats      config.NATS
	subject   string
	durable   string
	gapWait   time.Duration
	metrics   string
	logLevel  string
	logFormat string
	// lookup reads the environment (os.LookupEnv; tests replace it).
	lookup func(string) (string, bool)
}

func (o *collectOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.from, "from", "", "NATS servers: nats://host:port[,host:port...] (tls:// alike), as receipts.sink takes them")
	addReceiptsFlag(fs, &o.receipts, "", "central store `file` to collect into (created when missing)")
	fs.StringArrayVar(&o.trusted, "trusted-key", nil, "trusted node kernel public `key` (hex); repeat for each node")
	fs.StringVar(&o.nats.Stream, "stream", "", "JetStream stream (default "+ship.DefaultStream+")")
	fs.StringVar(&o.subject, "subject", "", "subject filter: every log (default chio.receipts.>) or a shard of them, e.g. chio.receipts.<log id>")
	fs.StringVar(&o.durable, "durable", collect.DefaultDurable, "durable consumer `name`: collectors sharing one share its messages (run them against one store); another store needs another name")
	fs.DurationVar(&o.gapWait, "gap-wait", collect.DefaultGapWait, "how long a batch waits for its predecessor before it is kept aside as a gap")
	fs.StringVar(&o.nats.TokenFile, "token-file", "", "NATS token `file`")
	fs.StringVar(&o.nats.TokenEnv, "token-env", "", "environment `variable` holding the NATS token")
	fs.StringVar(&o.nats.NKeyFile, "nkey-seed-file", "", "NATS NKey user seed `file`")
	fs.StringVar(&o.nats.NKeyEnv, "nkey-seed-env", "", "environment `variable` holding the NATS NKey user seed")
	fs.StringVar(&o.nats.CredsFile, "creds-file", "", "NATS .creds `file` (user JWT and seed)")
	fs.StringVar(&o.nats.CredsEnv, "creds-env", "", "environment `variable` holding a NATS .creds")
	fs.StringVar(&o.nats.CAFile, "ca-file", "", "CA bundle `file` tls:// servers are checked against (default the system's)")
	fs.StringVar(&o.metrics, "metrics-listen", "", "serve Prometheus /metrics, and a snapshot of the store at /snapshot, on this loopback `addr` (default none)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
}

func newReceiptsCollectCommand() *cobra.Command {
	o := &collectOptions{}
	cmd := &cobra.Command{
		Use:   "collect --from nats://HOST:PORT[,...] --receipts CENTRAL --trusted-key KEY [flags]",
		Short: "Collect the sealed batches nodes ship to NATS into a central store, as a witness",
		Long: `collect runs until interrupted: a durable JetStream consumer reads every
log's subject of the stream (or those --subject names) and gives each sealed
batch to the central store, which verifies it as a witness (every receipt's
signature and id, the checkpoint's signature and Merkle root, the chain) and
stores it beside the other logs. A message is acknowledged once the store
committed it, or kept it aside: a batch refused (a gap, a fork, a forged
receipt or checkpoint, an untrusted key) or a message that is no batch is
kept as evidence, never retried. A batch arriving before its predecessor
waits for it (--gap-wait) before it is kept aside as a gap. Progress
(stored, refused, lag) is logged every 10s and served as metrics, beside a
snapshot of the store (GET /snapshot on --metrics-listen) for reading it while
the collector holds the file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context(), cmd) },
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func (o *collectOptions) run(ctx context.Context, cmd *cobra.Command) error {
	if !config.IsNATSSink(o.from) {
		return usageErrorf("collect: --from %q: want nats://host:port[,host:port...] or tls://", o.from)
	}
	servers, err := config.NATSServers(o.from)
	if err != nil {
		return usageErrorf("collect: %v", err)
	}
	if o.receipts == "" {
		return usageErrorf("collect: --receipts names no central store")
	}
	if len(o.trusted) == 0 {
		return usageErrorf("collect: no --trusted-key: a witness must name the node keys it trusts")
	}
	if _, err := os.Stat(o.receipts); err == nil && !central.IsCentral(o.receipts) {
		return fmt.Errorf("collect: %s is not a central store (a local receipt log?): %w", o.receipts, central.ErrNotCentral)
	}
	logger, err := newLogger(o.logLevel, o.logFormat, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	s, err := central.Open(o.receipts, central.Options{TrustedKeys: o.trusted})
	if err != nil {
		return err
	}
	defer s.Close()
	c, err := collect.New(s, collect.Options{Servers: servers, Credentials: o.nats.Credentials(), CAFile: o.nats.CAFile,
		Lookup: o.lookup, Stream: o.nats.Stream, Subject: o.subject, Durable: o.durable, GapWait: o.gapWait, Logger: logger})
	if err != nil {
		return fmt.Errorf("collect: %w", err)
	}
	defer c.Close()
	if o.metrics != "" {
		_, stop, err := serveCollectorMetrics(o.metrics, c, s)
		if err != nil {
			return err
		}
		defer stop()
	}
	if err := c.Run(ctx); err != nil {
		return fmt.Errorf("collect: %w", err)
	}
	st := c.Stats()
	logger.WithField("batches", st.Batches).WithField("receipts", st.Receipts).WithField("rejected", st.Rejected).
		Info("collector stopped")
	return nil
}

// serveCollectorMetrics serves c's metrics on addr, a loopback address,
// and at /snapshot a consistent copy of its store s (what `receipts list`,
// `verify` and `prove` read while the collector holds the file).
// It returns the address it listens on.
func serveCollectorMetrics(addr string, c *collect.Collector, s *central.Store) (string, func(), error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", nil, usageErrorf("collect: --metrics-listen %q: %v", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", nil, usageErrorf("collect: --metrics-listen %q: want a loopback address", addr)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.Collectors()...)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("collect: listen for metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /snapshot", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		if _, err := s.Snapshot(w); err != nil {
			// Headers may be out: a short copy fails the reader's check.
			http.Error(w, "snapshot central store: "+err.Error(), http.StatusInternalServerError)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln) //nolint:errcheck // ErrServerClosed when stopped

	return ln.Addr().String(), func() { srv.Close() }, nil
}

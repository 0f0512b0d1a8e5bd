// Package ship streams a receipt log's sealed batches to NATS JetStream.
//
// The local bbolt log stays the first, durable write: decisions never wait
// on the network. A Shipper runs beside the agent or sidecar, reads the
// checkpoints the log seals, in order, and publishes each as one message
// (receipts.SealedBatch JSON) on subject "chio.receipts.<log id>" of stream
// CHIO_RECEIPTS, with Nats-Msg-Id "<log id>:<checkpoint seq>" so that a
// re-send is dropped by the stream. Up to Window batches are in flight (the
// next published before the previous one's ack); the mark advances only
// over batches acknowledged without a hole before them. A failed publish
// stops the round: the outstanding acks are waited out, and the next round
// reads what the stream holds of this log past the mark and publishes only
// the batches missing. The mark is recorded beside the log (PATH.shipped)
// and checked against the stream at every start and after every failure.
// An outage keeps the backlog in the local log; it ships when the sink
// returns.
//
// A Store sink (receipts/sink: dynamodb://, s3://, gs://, azblob://) is
// driven alike: up to Window Puts in flight at once, each idempotent, the
// mark advanced over contiguous successes only, and a resume asks the
// Store which checkpoints past the mark it holds (Store.Stored).
package ship

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/receipts/sink"
)

// Defaults (docs/receipt-log.md, "Shipping to NATS").
const (
	DefaultStream        = "CHIO_RECEIPTS"
	DefaultSubjectPrefix = "chio.receipts"
	// DefaultDuplicates is the stream's dedup window: a batch re-sent
	// within it (a lost ack, a crash between ack and the state file) is
	// dropped by the stream. A resume older than it is still exact: the
	// shipper resumes after the last batch the stream holds.
	DefaultDuplicates = 2 * time.Minute
	// DefaultMaxBacklog is the unshipped receipts past which the shipper
	// raises its alarm (status error and metric); decisions go on and the
	// backlog stays in the local log, which keeps everything.
	DefaultMaxBacklog = 1_000_000
	// DefaultPoll is how often the shipper looks for new checkpoints.
	DefaultPoll = 20 * time.Millisecond
	// DefaultWindow is the batches a shipper keeps in flight (published,
	// ack awaited): at checkpoint_every 100 about 1.1 MB.
	DefaultWindow = 16
	// DefaultReplicas is the stream's replicas when the cluster has that
	// many servers (fewer servers: one replica per server).
	DefaultReplicas = 3
)

// Credentials say how to authenticate to the servers: at most one of a
// token, an NKey seed or a .creds file (user JWT and seed), each read from a
// file or an environment variable. Secrets: never log them.
type Credentials struct {
	TokenFile, TokenEnv string
	NKeyFile, NKeyEnv   string
	CredsFile, CredsEnv string
}

func (c Credentials) count() int {
	n := 0
	for _, s := range []string{c.TokenFile, c.TokenEnv, c.NKeyFile, c.NKeyEnv, c.CredsFile, c.CredsEnv} {
		if s != "" {
			n++
		}
	}
	return n
}

// Options configure a Shipper.
type Options struct {
	// Servers are the cluster's URLs: nats://host:port or tls://host:port.
	Servers []string
	// Store, when set, is the sink instead of NATS: each batch is put to
	// it (Store.Put, idempotent), and a resume asks it what it holds. The
	// shipper closes it. Servers, Credentials, CAFile, Stream,
	// SubjectPrefix, Replicas and Duplicates are then unused.
	Store sink.Store
	// StoreURL, when Store is nil, names the Store sink New opens
	// (sink.OpenWith): dynamodb://TABLE, s3://, gs:// or azblob://.
	StoreURL string
	// CreateTable lets a dynamodb:// StoreURL create its table when
	// missing.
	CreateTable bool
	// Credentials authenticate; none means an open server.
	Credentials Credentials
	// CAFile, when set, is the CA bundle tls:// servers are checked
	// against (else the system's).
	CAFile string
	// Stream is the JetStream stream; it is created if missing, with
	// subjects SubjectPrefix + ".>". Default DefaultStream.
	Stream string
	// SubjectPrefix prefixes each log's subject. Default
	// DefaultSubjectPrefix.
	SubjectPrefix string
	// Replicas of a stream the shipper creates. 0: DefaultReplicas, or the
	// number of servers the cluster has when fewer.
	Replicas int
	// Duplicates is a created stream's dedup window. Default
	// DefaultDuplicates.
	Duplicates time.Duration
	// MaxBacklog is the unshipped receipts past which the alarm is raised.
	// Default DefaultMaxBacklog.
	MaxBacklog uint64
	// Poll is how often new checkpoints are looked for. Default DefaultPoll.
	Poll time.Duration
	// AckTimeout bounds one publish's wait for its ack (a Store: one Put,
	// and the resume's look). Default 5s (a Store: DefaultStoreTimeout). The
	// stream's dedup window (Duplicates) must exceed AckTimeout plus the
	// longest backoff between rounds (2 s): a publish whose ack timed out
	// may still land, and its re-send must be dropped.
	AckTimeout time.Duration
	// Window is the most batches published and awaiting their acks at
	// once. Default DefaultWindow; 1 waits for each ack before the next
	// publish (the stream then never holds a batch before its
	// predecessor, see docs/receipt-log.md).
	Window int
	// StateFile records the last acknowledged checkpoint. Default the log's
	// path + ".shipped".
	StateFile string
	// Lookup reads the environment (credentials *Env). Default os.LookupEnv.
	Lookup func(string) (string, bool)
	// Logger receives outages and recoveries. Default: discarded.
	Logger logrus.FieldLogger
	// OnAck, when set, is called after each acknowledged batch, in
	// checkpoint order, with its checkpoint seq and last receipt seq
	// (tests and benchmarks).
	OnAck func(cpSeq, endSeq uint64)
	// OnPublish, when set, is called after each batch is published with
	// its checkpoint seq and the batches now in flight, it included
	// (tests).
	OnPublish func(cpSeq uint64, inFlight int)
}

func (o Options) withDefaults() Options {
	if o.Stream == "" {
		o.Stream = DefaultStream
	}
	if o.SubjectPrefix == "" {
		o.SubjectPrefix = DefaultSubjectPrefix
	}
	if o.Duplicates <= 0 {
		o.Duplicates = DefaultDuplicates
	}
	if o.MaxBacklog == 0 {
		o.MaxBacklog = DefaultMaxBacklog
	}
	if o.Poll <= 0 {
		o.Poll = DefaultPoll
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = 5 * time.Second
		if o.Store != nil || o.StoreURL != "" {
			o.AckTimeout = DefaultStoreTimeout
		}
	}
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.Lookup == nil {
		o.Lookup = os.LookupEnv
	}
	if o.Logger == nil {
		l := logrus.New()
		l.Out = discard{}
		o.Logger = l
	}
	return o
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// CheckServers checks sink URLs: nats:// or tls://, a host and a port, no
// path, no credentials in the URL (they belong in a file or a variable,
// not in a config or a process listing).
func CheckServers(servers []string) error {
	if len(servers) == 0 {
		return errors.New("check nats servers: none given")
	}
	for _, s := range servers {
		u, err := url.Parse(s)
		if err != nil {
			return fmt.Errorf("check nats server %q: %w", s, err)
		}
		if u.Scheme != "nats" && u.Scheme != "tls" {
			return fmt.Errorf("check nats server %q: scheme %q, want nats:// or tls://", s, u.Scheme)
		}
		if u.User != nil {
			return fmt.Errorf("check nats server %q: credentials in the URL are refused; give a token, nkey or creds file or variable", redact(s))
		}
		if u.Hostname() == "" || u.Port() == "" {
			return fmt.Errorf("check nats server %q: want host:port", s)
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("check nats server %q: want only scheme://host:port", s)
		}
	}
	return nil
}

// redact drops URL user info from s for messages.
func redact(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		u.User = url.User("REDACTED")
		return u.String()
	}
	return s
}

// secret reads one credential from a file or a variable.
func secret(lookup func(string) (string, bool), what, file, env string) ([]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read nats %s file: %w", what, err)
		}
		if len(strings.TrimSpace(string(b))) == 0 {
			return nil, fmt.Errorf("read nats %s file %s: empty", what, file)
		}
		return b, nil
	}
	v, ok := lookup(env)
	if !ok || strings.TrimSpace(v) == "" {
		return nil, fmt.Errorf("read nats %s: variable %s is unset or empty", what, env)
	}
	return []byte(v), nil
}

// ClientOptions are the client options for credentials c (read through
// lookup, default os.LookupEnv) and CA bundle caFile, checked as the shipper
// checks them: the collector connects as the shipper does.
func ClientOptions(c Credentials, caFile string, lookup func(string) (string, bool)) ([]nats.Option, error) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	opts, err := authOptions(c, lookup)
	if err != nil {
		return nil, err
	}
	if caFile != "" {
		opts = append(opts, nats.RootCAs(caFile))
	}
	return opts, nil
}

// authOptions turns the credentials into client options, checking each
// secret's form so that a wrong one stops the start rather than every
// reconnect.
func authOptions(c Credentials, lookup func(string) (string, bool)) ([]nats.Option, error) {
	if c.count() > 1 {
		return nil, errors.New("nats credentials: give one of a token, an nkey seed or a creds file, from a file or a variable")
	}
	switch {
	case c.TokenFile != "" || c.TokenEnv != "":
		b, err := secret(lookup, "token", c.TokenFile, c.TokenEnv)
		if err != nil {
			return nil, err
		}
		tok := strings.TrimSpace(string(b))
		if strings.ContainsAny(tok, " \t\r\n") {
			return nil, errors.New("read nats token: it contains white space")
		}
		return []nats.Option{nats.Token(tok)}, nil
	case c.NKeyFile != "" || c.NKeyEnv != "":
		b, err := secret(lookup, "nkey seed", c.NKeyFile, c.NKeyEnv)
		if err != nil {
			return nil, err
		}
		kp, err := nkeys.ParseDecoratedNKey(b)
		if err != nil {
			return nil, fmt.Errorf("parse nats nkey seed: %w", err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return nil, fmt.Errorf("parse nats nkey seed: %w", err)
		}
		if !nkeys.IsValidPublicUserKey(pub) {
			return nil, errors.New("parse nats nkey seed: not a user seed (SU...)")
		}
		return []nats.Option{nats.Nkey(pub, kp.Sign)}, nil
	case c.CredsFile != "" || c.CredsEnv != "":
		b, err := secret(lookup, "creds", c.CredsFile, c.CredsEnv)
		if err != nil {
			return nil, err
		}
		jwt, err := nkeys.ParseDecoratedJWT(b)
		if err != nil {
			return nil, fmt.Errorf("parse nats creds: %w", err)
		}
		kp, err := nkeys.ParseDecoratedUserNKey(b)
		if err != nil {
			return nil, fmt.Errorf("parse nats creds: %w", err)
		}
		seed, err := kp.Seed()
		if err != nil {
			return nil, fmt.Errorf("parse nats creds: %w", err)
		}
		if jwt == "" || jwt == strings.TrimSpace(string(b)) {
			return nil, errors.New("parse nats creds: no user JWT block")
		}
		return []nats.Option{nats.UserJWTAndSeed(jwt, string(seed))}, nil
	}
	return nil, nil
}

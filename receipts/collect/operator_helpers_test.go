package collect

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/backbay-labs/chio-agent/internal/testutil"
	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
)

// opServer is one nats-server in operator mode (decentralized JWT auth):
// an operator signs a system account and an application account with
// JetStream enabled, both preloaded into a MEMORY resolver; users are
// signed by the application account and connect with .creds files. It
// runs on a random loopback port with its store in a temporary directory,
// and can be stopped and started again on both.
type opServer struct {
	t       testing.TB
	bin     string
	dir     string
	port    int
	account nkeys.KeyPair // signs users
	revoked string        // .creds of a user the account revokes
	cmd     *exec.Cmd
	done    chan struct{}
}

// startOpServer starts an operator-mode server; its application account
// revokes one user, whose .creds are s.revoked.
func startOpServer(t testing.TB) *opServer {
	t.Helper()
	s := &opServer{t: t, bin: natscluster.Binary(t), dir: t.TempDir()}
	op := mustKey(t, nkeys.CreateOperator)
	sys := mustKey(t, nkeys.CreateAccount)
	s.account = mustKey(t, nkeys.CreateAccount)
	opPub, sysPub, accPub := pubOf(t, op), pubOf(t, sys), pubOf(t, s.account)
	var revokedPub string
	s.revoked, revokedPub = s.user("revoked", s.account, nil)

	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "chio-test-operator"
	oc.SystemAccount = sysPub
	opJWT, err := oc.Encode(op)
	if err != nil {
		t.Fatal(err)
	}
	sc := jwt.NewAccountClaims(sysPub)
	sc.Name = "SYS"
	sysJWT, err := sc.Encode(op)
	if err != nil {
		t.Fatal(err)
	}
	ac := jwt.NewAccountClaims(accPub)
	ac.Name = "CHIO"
	// JetStream is off for an account unless its JWT gives it storage.
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ac.Revoke(revokedPub) // every JWT of it issued until now
	accJWT, err := ac.Encode(op)
	if err != nil {
		t.Fatal(err)
	}
	opFile := filepath.Join(s.dir, "operator.jwt")
	if err := os.WriteFile(opFile, []byte(opJWT), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := fmt.Sprintf(`server_name: op
listen: 127.0.0.1:%d
operator: %q
system_account: %s
resolver: MEMORY
resolver_preload: {
  %s: %q
  %s: %q
}
jetstream { store_dir: %q, max_memory_store: 64MB, max_file_store: 256MB }
`, s.port, opFile, sysPub, sysPub, sysJWT, accPub, accJWT, filepath.Join(s.dir, "store"))
	if err := os.WriteFile(filepath.Join(s.dir, "nats.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func mustKey(t testing.TB, create func() (nkeys.KeyPair, error)) nkeys.KeyPair {
	t.Helper()
	kp, err := create()
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func pubOf(t testing.TB, kp nkeys.KeyPair) string {
	t.Helper()
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// URL is the server's client URL.
func (s *opServer) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

// start runs the server and waits until a user of the account can use
// JetStream.
func (s *opServer) start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, "-c", filepath.Join(s.dir, "nats.conf"), "-l", filepath.Join(s.dir, "server.log"))
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := testutil.StartChild(s.cmd); err != nil {
		s.t.Fatalf("start nats-server in operator mode: %v", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(s.cmd, s.done)
	creds := s.creds("probe", nil)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := s.jetStreamReady(creds)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
			s.t.Fatalf("operator-mode server not serving JetStream: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *opServer) jetStreamReady(creds string) error {
	nc, err := s.connect(creds)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	js, err := nc.JetStream(nats.Context(ctx))
	if err != nil {
		return err
	}
	_, err = js.AccountInfo(nats.Context(ctx))
	return err
}

// stop kills the server (as a crash would) and waits for it to exit.
func (s *opServer) stop() {
	if s.cmd == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

// creds writes a .creds file (user JWT and seed) for a new user of the
// account, edit changing its claims first; it returns the file's path.
func (s *opServer) creds(name string, edit func(*jwt.UserClaims)) string {
	path, _ := s.user(name, s.account, edit)
	return path
}

// user writes a .creds file for a new user signed by account and returns
// its path and public key.
func (s *opServer) user(name string, account nkeys.KeyPair, edit func(*jwt.UserClaims)) (string, string) {
	s.t.Helper()
	u := mustKey(s.t, nkeys.CreateUser)
	pub := pubOf(s.t, u)
	uc := jwt.NewUserClaims(pub)
	uc.Name = name
	if edit != nil {
		edit(uc)
	}
	userJWT, err := uc.Encode(account)
	if err != nil {
		s.t.Fatal(err)
	}
	seed, err := u.Seed()
	if err != nil {
		s.t.Fatal(err)
	}
	cfg, err := jwt.FormatUserConfig(userJWT, seed)
	if err != nil {
		s.t.Fatal(err)
	}
	path := filepath.Join(s.t.TempDir(), name+".creds")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		s.t.Fatal(err)
	}
	return path, pub
}

// connect connects a plain client with the .creds file at creds.
func (s *opServer) connect(creds string) (*nats.Conn, error) {
	return nats.Connect(s.URL(), nats.UserCredentials(creds), nats.Timeout(5*time.Second))
}

// mixCreds writes to out a .creds file of jwtFrom's user JWT with
// seedFrom's seed: a file put together wrongly.
func mixCreds(t testing.TB, jwtFrom, seedFrom, out string) {
	t.Helper()
	a, err := os.ReadFile(jwtFrom)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(seedFrom)
	if err != nil {
		t.Fatal(err)
	}
	userJWT, err := nkeys.ParseDecoratedJWT(a)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := jwt.FormatUserConfig(userJWT, seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
}

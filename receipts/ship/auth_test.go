package ship

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
)

// TestShipNKeyOverTLS ships through a cluster that admits one NKey user
// over TLS only: tls:// URLs, the CA from ca_file, the seed from a file.
// Another user's seed, or no CA, is refused at start.
func TestShipNKeyOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := testCerts(t, dir)
	user, _ := nkeys.CreateUser()
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := filepath.Join(dir, "user.nk")
	os.WriteFile(seedFile, seed, 0o600)
	c := natscluster.StartWith(t, natscluster.Options{NKey: pub, CertFile: cert, KeyFile: key})

	l := openLog(t, tempLog(t), testKey(t.Name()), 10)
	defer l.Close()
	o := Options{Servers: strings.Split(strings.ReplaceAll(c.URLs(), "nats://", "tls://"), ","),
		CAFile: ca, Credentials: Credentials{NKeyFile: seedFile}}
	uniqueNames(&o)
	s := startShipper(t, l, o)
	appendN(t, l, testKey(t.Name()), 0, 100)
	sealAll(t, l)
	if st := waitShipped(t, l, s, time.Minute); st.AckedSeq != 100 || st.Batches != 10 {
		t.Fatalf("status: %+v", st)
	}

	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	otherFile := filepath.Join(dir, "other.nk")
	os.WriteFile(otherFile, otherSeed, 0o600)
	for _, tc := range []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"another user", func(o *Options) { o.Credentials.NKeyFile = otherFile }, "refuse the credentials"},
		{"no CA", func(o *Options) { o.CAFile = "" }, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o2 := o
			tc.edit(&o2)
			s, err := New(l, o2)
			if err == nil {
				s.Close()
				t.Fatalf("New accepted %s", tc.name)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// TestCredsFileParsed: a .creds file's JWT and seed blocks are read, and a
// seed that is no user seed is refused.
func TestCredsFileParsed(t *testing.T) {
	user, _ := nkeys.CreateUser()
	seed, _ := user.Seed()
	creds := "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5In0.e30.c2ln\n------END NATS USER JWT------\n\n" +
		"-----BEGIN USER NKEY SEED-----\n" + string(seed) + "\n------END USER NKEY SEED------\n"
	lookup := func(k string) (string, bool) { return creds, k == "CREDS" }
	opts, err := authOptions(Credentials{CredsEnv: "CREDS"}, lookup)
	if err != nil || len(opts) != 1 {
		t.Fatalf("creds from a variable: %v (%d options)", err, len(opts))
	}
	acct, _ := nkeys.CreateAccount()
	aseed, _ := acct.Seed()
	if _, err := authOptions(Credentials{NKeyEnv: "S"}, func(string) (string, bool) { return string(aseed), true }); err == nil || !strings.Contains(err.Error(), "not a user seed") {
		t.Fatalf("an account seed as the user's: %v", err)
	}
}

// testCerts writes a CA and a server certificate for 127.0.0.1 into dir.
func testCerts(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "chio test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", srvDER), write("server.key", "EC PRIVATE KEY", keyDER)
}

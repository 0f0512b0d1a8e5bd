package kernel

import (
	"crypto/ed25519"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testSeedHex = "0707070707070707070707070707070707070707070707070707070707070707"

// The receipt vectors' seed and kernel_key pin ParseSeedHex and PublicKeyHex.
const testPubHex = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"

func envOf(m map[string]string) LookupEnv {
	return func(name string) (string, bool) { v, ok := m[name]; return v, ok }
}

func writeKeyFile(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kernel.key")
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // WriteFile's mode is masked by umask
		t.Fatal(err)
	}
	return p
}

func TestParseKeys(t *testing.T) {
	key, err := ParseSeedHex(" " + testSeedHex + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := PublicKeyHex(key.Public().(ed25519.PublicKey)); got != testPubHex {
		t.Fatalf("public key %s, want %s", got, testPubHex)
	}
	if pub, err := ParsePublicKeyHex(testPubHex); err != nil || PublicKeyHex(pub) != testPubHex {
		t.Fatalf("ParsePublicKeyHex: %v", err)
	}
	for _, bad := range []string{"", "07", testSeedHex + "07", strings.Repeat("zz", 32), testSeedHex[:63] + "g"} {
		_, err := ParseSeedHex(bad)
		if !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParseSeedHex(%q): want ErrInvalidKey, got %v", bad, err)
		}
		if len(bad) > 8 && err != nil && strings.Contains(err.Error(), bad) {
			t.Errorf("error quotes the secret: %v", err)
		}
		if _, err := ParsePublicKeyHex(bad); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParsePublicKeyHex(%q): want ErrInvalidKey, got %v", bad, err)
		}
	}
}

func TestLoadSigningKey(t *testing.T) {
	file := writeKeyFile(t, testSeedHex+"\n", 0o600)
	other := "0808080808080808080808080808080808080808080808080808080808080808"

	// The variable wins over the file.
	key, err := LoadSigningKey(envOf(map[string]string{EnvSigningKey: other}), file)
	if err != nil || PublicKeyHex(key.Public().(ed25519.PublicKey)) == testPubHex {
		t.Fatalf("env key: %v", err)
	}
	// Empty variable: the file.
	key, err = LoadSigningKey(envOf(map[string]string{EnvSigningKey: ""}), file)
	if err != nil || PublicKeyHex(key.Public().(ed25519.PublicKey)) != testPubHex {
		t.Fatalf("file key: %v", err)
	}
	// A malformed variable is named, its value is not echoed.
	_, err = LoadSigningKey(envOf(map[string]string{EnvSigningKey: "secret-but-wrong"}), file)
	if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), EnvSigningKey) || strings.Contains(err.Error(), "secret-but-wrong") {
		t.Fatalf("malformed env key: %v", err)
	}
	// Neither.
	if _, err := LoadSigningKey(envOf(nil), ""); !errors.Is(err, ErrNoSigningKey) {
		t.Fatalf("no key: %v", err)
	}
	if _, err := LoadSigningKey(nil, ""); !errors.Is(err, ErrNoSigningKey) {
		t.Fatalf("nil lookup: %v", err)
	}
}

func TestLoadKeyFile(t *testing.T) {
	for _, content := range []string{testSeedHex, testSeedHex + "\n", testSeedHex + "\r\n"} {
		key, err := LoadKeyFile(writeKeyFile(t, content, 0o600))
		if err != nil || PublicKeyHex(key.Public().(ed25519.PublicKey)) != testPubHex {
			t.Fatalf("content %q: %v", content, err)
		}
	}
	if _, err := LoadKeyFile(writeKeyFile(t, testSeedHex+"\n", 0o400)); err != nil {
		t.Fatalf("mode 0400: %v", err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o620, 0o660, 0o777} {
		p := writeKeyFile(t, testSeedHex+"\n", mode)
		_, err := LoadKeyFile(p)
		if !errors.Is(err, ErrInsecureKeyFile) {
			t.Errorf("mode %#o: want ErrInsecureKeyFile, got %v", mode, err)
			continue
		}
		if !strings.Contains(err.Error(), p) {
			t.Errorf("mode %#o: error does not name the file: %v", mode, err)
		}
		if want := "mode " + fsModeOctal(mode); !strings.Contains(err.Error(), want) {
			t.Errorf("mode %#o: error %q does not name the mode (%s)", mode, err, want)
		}
	}
	for name, content := range map[string]string{
		"empty":     "",
		"short":     testSeedHex[:60] + "\n",
		"two keys":  testSeedHex + "\n" + testSeedHex + "\n",
		"not hex":   strings.Repeat("x", 64) + "\n",
		"oversized": strings.Repeat("0", maxKeyFileSize+10),
	} {
		_, err := LoadKeyFile(writeKeyFile(t, content, 0o600))
		if !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: want ErrInvalidKey, got %v", name, err)
		}
	}
	if _, err := LoadKeyFile(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := LoadKeyFile(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
}

func fsModeOctal(m os.FileMode) string {
	const digits = "01234567"
	p := uint32(m.Perm())
	return string([]byte{'0', digits[p>>6&7], digits[p>>3&7], digits[p&7]})
}

func TestGenerateKeyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "kernel.key")
	key, err := GenerateKeyFile(p)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %#o, want 0600", fi.Mode().Perm())
	}
	data, _ := os.ReadFile(p)
	if len(data) != 65 || data[64] != '\n' {
		t.Fatalf("file content is %d bytes: %q", len(data), data)
	}
	loaded, err := LoadKeyFile(p)
	if err != nil || !loaded.Equal(key) {
		t.Fatalf("reload: %v", err)
	}
	// Never overwrite: the second call fails and the key is unchanged.
	if _, err := GenerateKeyFile(p); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second generate: want fs.ErrExist, got %v", err)
	}
	again, _ := os.ReadFile(p)
	if string(again) != string(data) {
		t.Fatal("existing key file was modified")
	}
	// Two generated keys differ.
	other, err := GenerateKeyFile(filepath.Join(t.TempDir(), "k2"))
	if err != nil || other.Equal(key) {
		t.Fatalf("second key: %v", err)
	}
	if _, err := GenerateKeyFile(filepath.Join(t.TempDir(), "no", "such", "dir")); err == nil {
		t.Fatal("generate into a missing directory succeeded")
	}
}

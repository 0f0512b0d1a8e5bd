package kernel

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/backbay-labs/chio-agent/internal/regfile"
)

// EnvSigningKey names the variable that may hold the kernel's Ed25519
// signing key as 64 hex characters (the 32-byte seed).
const EnvSigningKey = "CHIO_SIGNING_KEY"

// maxKeyFileSize bounds what LoadKeyFile reads: a key file is 65 bytes, so
// anything much larger is the wrong file.
const maxKeyFileSize = 4096

// LookupEnv reads one environment variable; os.LookupEnv fits. Functions take
// it as an argument so tests never touch the real environment.
type LookupEnv func(name string) (string, bool)

// PublicKeyHex returns the lowercase hex of an Ed25519 public key, the form
// receipts carry as kernel_key.
func PublicKeyHex(pub ed25519.PublicKey) string { return hex.EncodeToString(pub) }

// ParsePublicKeyHex parses 64 hex characters as an Ed25519 public key.
func ParsePublicKeyHex(s string) (ed25519.PublicKey, error) {
	b, err := decodeHexLen(s, ed25519.PublicKeySize)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	return ed25519.PublicKey(b), nil
}

// ParseSeedHex parses 64 hex characters (surrounding white space ignored) as
// an Ed25519 seed and returns the private key it expands to. Errors never
// quote the input: it is secret.
func ParseSeedHex(s string) (ed25519.PrivateKey, error) {
	b, err := decodeHexLen(strings.TrimSpace(s), ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("parse signing key seed: %w", err)
	}
	return ed25519.NewKeyFromSeed(b), nil
}

// decodeHexLen decodes s as hex of exactly n bytes. The error names the
// length and problem, not the content.
func decodeHexLen(s string, n int) ([]byte, error) {
	if len(s) != 2*n {
		return nil, fmt.Errorf("%w: %d hex characters, want %d", ErrInvalidKey, len(s), 2*n)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not hex", ErrInvalidKey)
	}
	return b, nil
}

// LoadSigningKey returns the kernel signing key: from CHIO_SIGNING_KEY when
// that is set and non-empty (it wins, so a container can inject a key
// without a file), else from keyFile via LoadKeyFile. With neither it
// returns ErrNoSigningKey; it never invents a key, since a receipt signed by
// a throwaway key proves nothing.
func LoadSigningKey(lookup LookupEnv, keyFile string) (ed25519.PrivateKey, error) {
	if lookup != nil {
		if v, ok := lookup(EnvSigningKey); ok && v != "" {
			key, err := ParseSeedHex(v)
			if err != nil {
				return nil, fmt.Errorf("load signing key from %s: %w", EnvSigningKey, err)
			}
			return key, nil
		}
	}
	if keyFile == "" {
		return nil, fmt.Errorf("load signing key: %w: set %s or give a key file", ErrNoSigningKey, EnvSigningKey)
	}
	return LoadKeyFile(keyFile)
}

// LoadKeyFile reads a key file: the seed as 64 hex characters and a newline.
// A file whose mode gives group or others any access is refused
// (ErrInsecureKeyFile), as ssh refuses such private keys: whoever can read
// it can forge receipts, and whoever can write it can swap the key.
func LoadKeyFile(path string) (ed25519.PrivateKey, error) {
	f, err := regfile.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load key file: %w", err)
	}
	defer f.Close()
	// Stat the open file, not the path, so the mode checked is the mode of
	// the bytes read.
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load key file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("load key file %s: not a regular file (mode %s)", path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("load key file %s: %w: mode %#o, want 0600 or stricter (chmod 600 %s)", path, ErrInsecureKeyFile, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("load key file %s: %w", path, err)
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("load key file %s: %w: file larger than %d bytes", path, ErrInvalidKey, maxKeyFileSize)
	}
	key, err := ParseSeedHex(string(data))
	if err != nil {
		return nil, fmt.Errorf("load key file %s: %w", path, err)
	}
	return key, nil
}

// GenerateKeyFile creates path holding a new random seed (hex and a
// newline) with mode 0600 and returns the key. It never overwrites: an
// existing path fails with an error wrapping fs.ErrExist, because replacing
// a kernel key orphans every receipt signed with the old one.
func GenerateKeyFile(path string) (ed25519.PrivateKey, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("generate key file: %w", err)
	}
	_, werr := f.WriteString(hex.EncodeToString(seed) + "\n")
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(path) // a half-written key must not be loaded later
		return nil, fmt.Errorf("generate key file %s: %w", path, err)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

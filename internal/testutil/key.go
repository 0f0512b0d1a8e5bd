package testutil

import (
	"crypto/ed25519"
	"crypto/sha256"
)

// Key is a signing key derived from name, the same on every run: a test
// passing its own name gets a key (and so a receipt log id) of its own.
func Key(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("chio test key " + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

package receipts

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// MERGE NOTE: branch i14-ship declares LogIDPrefix and LogIDOf, the same
// names with the same meaning, in receipts/batch_read.go. When both branches
// are in, delete this file: every caller already uses those names.

// LogIDPrefix starts every log id.
const LogIDPrefix = "local-log-"

// LogIDOf is the id a log signed by kernelKey (hex Ed25519 public key) goes
// by beyond this node: "local-log-" + hex SHA-256 of the 32 key bytes. A
// key that is not 32 bytes of hex is an error.
func LogIDOf(kernelKey string) (string, error) {
	pub, err := parseKey(kernelKey)
	if err != nil {
		return "", fmt.Errorf("derive log id: %w", err)
	}
	sum := sha256.Sum256(pub)
	return LogIDPrefix + hex.EncodeToString(sum[:]), nil
}

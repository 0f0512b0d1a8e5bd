package hushspec

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// Hash returns the lowercase hex SHA-256 of the resolved policy's RFC 8785
// canonical JSON: the document after extends was merged (without extends),
// as written, with no defaults filled in. Receipts carry it as policy_hash.
func (p *Policy) Hash() string { return p.hash }

// CanonicalJSON returns the RFC 8785 form of the resolved document.
func (d *Document) CanonicalJSON() ([]byte, error) {
	b, err := jcs.Marshal(d.tree)
	if err != nil {
		return nil, fmt.Errorf("canonicalize policy: %w", err)
	}
	return b, nil
}

func hashTree(tree map[string]any) (string, error) {
	b, err := (&Document{tree: tree}).CanonicalJSON()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

package policysource

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// ParsePin reads a source URL's fragment, which may only be a content pin,
// "sha256:<64 hex digits>". An empty fragment is no pin (nil).
func ParsePin(fragment string) ([]byte, error) {
	if fragment == "" {
		return nil, nil
	}
	hexPin, ok := strings.CutPrefix(fragment, "sha256:")
	pin, err := hex.DecodeString(hexPin)
	if !ok || err != nil || len(pin) != sha256.Size {
		return nil, fmt.Errorf("fragment %q: the only fragment is a pin, #sha256:<64 hex digits>", fragment)
	}
	return pin, nil
}

// CheckPin refuses data whose SHA-256 is not pin (nil: no pin), naming
// the sum it has.
func CheckPin(data, pin []byte) error {
	if pin == nil {
		return nil
	}
	if sum := sha256.Sum256(data); !bytes.Equal(sum[:], pin) {
		return fmt.Errorf("%w: the content's sha256 is %s", ErrPinMismatch, hex.EncodeToString(sum[:]))
	}
	return nil
}

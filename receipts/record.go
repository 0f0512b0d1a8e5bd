package receipts

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// maxIndexValue bounds an indexed string (workload, host, decision), so an
// index key always fits comfortably in a bbolt page.
const maxIndexValue = 1024

// Entry is one stored receipt with the fields the log indexes.
type Entry struct {
	// Seq is the receipt's position in the log, from 1.
	Seq uint64 `json:"seq"`
	// ID is the receipt id (hex SHA-256 of its body).
	ID string `json:"id"`
	// Timestamp is the receipt's own timestamp, unix seconds.
	Timestamp int64 `json:"timestamp"`
	// Decision is the verdict (allow, deny) or "none" for receipts that carry
	// no decision.
	Decision string `json:"decision"`
	// Workload names the workload the action came from; "" when the receipt
	// does not say.
	Workload string `json:"workload,omitempty"`
	// Host is the destination host of an egress action; "" for other actions.
	Host string `json:"host,omitempty"`
	// Receipt is the canonical JSON of the signed receipt, exactly as stored.
	Receipt json.RawMessage `json:"receipt"`
}

// receiptView is the part of a chio.receipt.v1 the log reads. The receipt
// is never re-encoded from it: the stored bytes are the canonical input.
type receiptView struct {
	ID        string      `json:"id"`
	Timestamp json.Number `json:"timestamp"`
	KernelKey string      `json:"kernel_key"`
	Signature string      `json:"signature"`
	Decision  *struct {
		Verdict string `json:"verdict"`
	} `json:"decision"`
	Action struct {
		Parameters map[string]json.RawMessage `json:"parameters"`
	} `json:"action"`
	Metadata map[string]json.RawMessage `json:"metadata"`
}

// parseEntry reads the indexed fields out of canonical receipt bytes. It
// checks shape only (hex lengths, integer timestamp); signatures are the
// verifier's job.
func parseEntry(canonical []byte) (Entry, string, error) {
	var v receiptView
	dec := json.NewDecoder(bytes.NewReader(canonical))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return Entry{}, "", fmt.Errorf("decode receipt: %w", err)
	}
	ts, err := strconv.ParseInt(string(v.Timestamp), 10, 64)
	if err != nil || ts < 0 {
		return Entry{}, "", fmt.Errorf("receipt timestamp %q is not a non-negative integer", v.Timestamp)
	}
	e := Entry{ID: v.ID, Timestamp: ts, Decision: "none", Receipt: canonical}
	if v.Decision != nil {
		e.Decision = v.Decision.Verdict
	}
	e.Workload = firstString(v.Metadata, workloadKeys...)
	e.Host = firstString(v.Action.Parameters, hostKeys...)
	if err := checkEntry(&e, v.KernelKey, v.Signature, 0); err != nil {
		return Entry{}, "", err
	}
	return e, v.KernelKey, nil
}

// Where the indexed workload and host are read from: metadata and
// action.parameters members, first match wins.
var (
	workloadKeys = []string{"workload", "workload_id", "workload_name"}
	// target is what an egress receipt's policy evaluated (SNI, else HTTP
	// Host, else the name asked for, else the IP); the others are what
	// other receipt producers call the destination.
	hostKeys = []string{"target", "host", "sni", "server_name"}
)

func checkEntry(e *Entry, key, sig string, ts uint64) error {
	if !isHex(e.ID, 64) {
		return fmt.Errorf("receipt id %q is not 64 lowercase hex digits", e.ID)
	}
	if !isHex(key, 64) {
		return fmt.Errorf("receipt kernel_key %q is not 64 lowercase hex digits", key)
	}
	if !isHex(sig, 128) {
		return fmt.Errorf("receipt signature is not 128 lowercase hex digits")
	}
	if ts > 1<<62 {
		return fmt.Errorf("receipt timestamp %d out of range", ts)
	}
	for _, f := range [...]struct{ name, v string }{{"decision", e.Decision}, {"workload", e.Workload}, {"host", e.Host}} {
		if len(f.v) > maxIndexValue {
			return fmt.Errorf("receipt %s is %d bytes, more than %d", f.name, len(f.v), maxIndexValue)
		}
	}
	return nil
}

// firstString returns the first of keys that holds a JSON string in m. A
// workload may also be an object with a "name" member.
func firstString(m map[string]json.RawMessage, keys ...string) string {
	for _, k := range keys {
		raw, ok := m[k]
		if !ok {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
		var obj struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(raw, &obj) == nil && obj.Name != "" {
			return obj.Name
		}
	}
	return ""
}

// isHex reports whether s is n lowercase hex digits.
func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// canonicalReceipt returns the canonical form of a receipt given as JSON.
func canonicalReceipt(data []byte) ([]byte, error) {
	out, err := jcs.Canonicalize(data)
	if err != nil {
		return nil, fmt.Errorf("canonicalize receipt: %w", err)
	}
	return out, nil
}

func putU64(b []byte, v uint64) { binary.BigEndian.PutUint64(b, v) }
func getU64(b []byte) uint64    { return binary.BigEndian.Uint64(b) }

func u64key(v uint64) []byte {
	b := make([]byte, 8)
	putU64(b, v)
	return b
}

// valueKey is an index key: a 2-byte length, the value, then the receipt
// sequence number, so that one value's entries are contiguous and in
// sequence order, and a value can never run into the next.
func valueKey(value string, seq uint64) []byte {
	b := make([]byte, 2+len(value)+8)
	binary.BigEndian.PutUint16(b, uint16(len(value)))
	copy(b[2:], value)
	putU64(b[2+len(value):], seq)
	return b
}

func valuePrefix(value string) []byte {
	k := valueKey(value, 0)
	return k[:len(k)-8]
}

func timeKey(ts int64, seq uint64) []byte {
	b := make([]byte, 16)
	putU64(b, uint64(ts))
	putU64(b[8:], seq)
	return b
}

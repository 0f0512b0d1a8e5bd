package session

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
)

// EntrySchema versions the journal entry format (docs/sessions.md).
const EntrySchema = "chio-agent.session_entry.v1"

// Kinds of journal entries.
const (
	// KindCall records one decided call: allowed or not, by which guard,
	// with the request bytes it reserved. Its receipt names its hash.
	KindCall = "call"
	// KindSettle records what an allowed call used once its response was
	// done: the request bytes actually read and the response bytes written.
	KindSettle = "settle"
	// KindHandover closes this replica's run of a session: the session's
	// journal went to another replica (Holder), which continues it.
	KindHandover = "handover"
	// KindSegment starts a replica's run of a session: Holder holds it
	// from here, with Totals as the figures it starts from. Link says how
	// it joins what came before (LinkNew, LinkLinked, LinkUnlinked).
	KindSegment = "segment"
)

// Links of a segment entry to the history before it.
const (
	// LinkNew: a session no replica held; seq 1, prev_hash GenesisHash.
	LinkNew = "new"
	// LinkLinked: prev_hash is the hash of the previous holder's handover
	// entry, fetched with its chain and verified; Totals are that chain's.
	LinkLinked = "linked"
	// LinkUnlinked: the previous holder could not be reached. prev_hash is
	// the last hash this replica can prove (its own last entry of the
	// session, or GenesisHash) and Totals that entry's figures; whatever
	// the unreachable holder appended after it is not in this chain.
	LinkUnlinked = "unlinked"
)

// GenesisHash is the prev_hash of a session's first entry.
var GenesisHash = strings.Repeat("0", 64)

// MaxIDBytes bounds a session id.
const MaxIDBytes = 128

// Entry is one record of a session's journal. The chain: entry_hash is the
// lowercase hex SHA-256 of the canonical JSON (RFC 8785) of the entry
// without entry_hash and receipt_id; prev_hash is the previous entry's
// entry_hash (GenesisHash for seq 1). receipt_id stays out of the hash
// because the receipt's metadata names the entry hash (the receipt id is a
// hash over that metadata); the binding is checked both ways by Verify with
// the receipt log.
type Entry struct {
	Schema    string `json:"schema"`
	SessionID string `json:"session_id"`
	// Epoch counts the session's lives under one id: a session idle past
	// sessions.idle_expiry starts a new epoch with fresh totals, in the
	// same chain.
	Epoch uint64 `json:"epoch"`
	// Seq is the entry's position in the session's chain, from 1.
	Seq      uint64 `json:"seq"`
	PrevHash string `json:"prev_hash"`
	Kind     string `json:"kind"`
	// Timestamp is unix seconds, the receipt's timestamp for a call.
	Timestamp int64 `json:"timestamp"`
	// ToolServer and ToolName name the tool called (call entries; a settle
	// repeats its call's).
	ToolServer string `json:"tool_server"`
	ToolName   string `json:"tool_name"`
	// Allowed says whether the call was allowed (a settle: true).
	Allowed bool `json:"allowed"`
	// Guard names the guard that denied, "" when allowed.
	Guard string `json:"guard"`
	// CallSeq is the call a settle entry settles; 0 in call entries.
	CallSeq uint64 `json:"call_seq"`
	// RequestBytes: in a call, the request body bytes reserved (its
	// Content-Length, or the bound a body of unknown length may reach); in
	// a settle, the bytes actually read.
	RequestBytes int64 `json:"request_bytes"`
	// ResponseBytes: in a settle, the response body bytes written to the
	// client; 0 in a call.
	ResponseBytes int64 `json:"response_bytes"`
	// Holder names a replica (sessions.self): in a handover entry the one
	// the session went to, in a segment entry the one continuing it.
	Holder string `json:"holder,omitempty"`
	// Link is a segment entry's link to the history before it.
	Link string `json:"link,omitempty"`
	// Totals are the figures a segment entry starts from.
	Totals *Totals `json:"totals,omitempty"`

	// EntryHash is this entry's hash (see the type's comment).
	EntryHash string `json:"entry_hash,omitempty"`
	// ReceiptID is the receipt of a call entry; "" in a settle.
	ReceiptID string `json:"receipt_id,omitempty"`
}

// Hash computes the entry's hash: SHA-256 over the canonical JSON of the
// entry without entry_hash and receipt_id.
func (e *Entry) Hash() (string, error) {
	var buf [512]byte
	b, err := e.appendCanonical(buf[:0], false)
	if err != nil {
		return "", fmt.Errorf("hash journal entry: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// encode is the stored form of an entry: its canonical JSON, hash and
// receipt id included.
func (e *Entry) encode() ([]byte, error) {
	b, err := e.appendCanonical(make([]byte, 0, 512), true)
	if err != nil {
		return nil, fmt.Errorf("encode journal entry: %w", err)
	}
	return b, nil
}

// appendCanonical appends the entry's canonical JSON (RFC 8785: members in
// code-unit order, integers exact, strings escaped by jcs), with entry_hash
// and receipt_id when full and they are set. It is the one encoder of
// entries; a test checks it against jcs.Marshal of the struct.
func (e *Entry) appendCanonical(b []byte, full bool) ([]byte, error) {
	for _, s := range []string{e.Schema, e.SessionID, e.PrevHash, e.Kind, e.ToolServer, e.ToolName, e.Guard, e.EntryHash, e.ReceiptID, e.Holder, e.Link} {
		if !utf8.ValidString(s) {
			return nil, fmt.Errorf("%w: invalid UTF-8", ErrCorrupt)
		}
	}
	str := func(b []byte, key, v string) []byte {
		b = append(b, key...)
		return jcs.AppendString(b, v)
	}
	b = append(b, `{"allowed":`...)
	b = strconv.AppendBool(b, e.Allowed)
	b = append(b, `,"call_seq":`...)
	b = strconv.AppendUint(b, e.CallSeq, 10)
	if full && e.EntryHash != "" {
		b = str(b, `,"entry_hash":`, e.EntryHash)
	}
	b = append(b, `,"epoch":`...)
	b = strconv.AppendUint(b, e.Epoch, 10)
	b = str(b, `,"guard":`, e.Guard)
	if e.Holder != "" {
		b = str(b, `,"holder":`, e.Holder)
	}
	b = str(b, `,"kind":`, e.Kind)
	if e.Link != "" {
		b = str(b, `,"link":`, e.Link)
	}
	b = str(b, `,"prev_hash":`, e.PrevHash)
	if full && e.ReceiptID != "" {
		b = str(b, `,"receipt_id":`, e.ReceiptID)
	}
	b = append(b, `,"request_bytes":`...)
	b = strconv.AppendInt(b, e.RequestBytes, 10)
	b = append(b, `,"response_bytes":`...)
	b = strconv.AppendInt(b, e.ResponseBytes, 10)
	b = str(b, `,"schema":`, e.Schema)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = str(b, `,"session_id":`, e.SessionID)
	b = append(b, `,"timestamp":`...)
	b = strconv.AppendInt(b, e.Timestamp, 10)
	b = str(b, `,"tool_name":`, e.ToolName)
	b = str(b, `,"tool_server":`, e.ToolServer)
	if e.Totals != nil {
		raw, err := json.Marshal(e.Totals)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"totals":`...)
		if b, err = jcs.Append(b, raw); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

func decodeEntry(b []byte) (Entry, error) {
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return Entry{}, fmt.Errorf("%w: entry is not JSON: %w", ErrCorrupt, err)
	}
	return e, nil
}

// ValidID reports whether id can name a session: 1 to 128 bytes of
// visible ASCII (0x21-0x7e). Anything else is refused rather than
// normalized, so that two spellings never name one session.
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > MaxIDBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

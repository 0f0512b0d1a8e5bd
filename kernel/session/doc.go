// Package session is the session journal: per session an append-only,
// hash-chained record of every call the kernel decided for it, and the
// session guard that denies a call once the session's cumulative limits
// are reached (calls, calls per tool, request and response bytes, with an
// idle expiry).
//
// A Journal is used through the kernel: Journal.Call returns a Call, given
// to kernel.Kernel.PrepareToolCall as ToolCall.Guard. The kernel decides by
// policy, then the Call locks the session (one mutex per session: calls of
// one session serialize, other sessions run in parallel), checks the
// limits, builds the entry and puts its hash into the receipt's metadata
// ("session": id, epoch, seq, entry_hash); once the receipt is prepared the
// entry takes its id, is appended and the lock released. Admission and
// accounting happen under that one lock, so N concurrent calls against a
// limit of K admit exactly K. After the call, Settle records what it read
// and wrote.
//
// The file (a bbolt database beside the receipt log, DefaultPath) holds
// the entries and each session's head (where its chain ends and its
// totals), written by one group-committing writer; Call.Durable waits for
// an entry to be written. Verify re-walks every chain, recomputes every
// head with the same accounting rule as the live journal (chainState.apply),
// and with the receipt log checks that entries and receipts name each
// other. docs/sessions.md documents the format.
package session

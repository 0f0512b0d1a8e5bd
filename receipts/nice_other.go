//go:build !linux

package receipts

// deprioritize is Linux-only (per-thread nice values); elsewhere the async
// committer runs at the process's priority.
func deprioritize() {}

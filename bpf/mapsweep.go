package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// deleteWhere removes every entry of m that drop picks: it lists them
// first and deletes after, as a map must not change under its iterator. An
// entry already gone is no error. The setters use it to remove what a new
// set of rules no longer holds, after writing the new ones.
func deleteWhere[K, V any](m *ebpf.Map, drop func(k K, v V) bool) error {
	var picked []K
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if drop(k, v) {
			picked = append(picked, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list: %w", err)
	}
	for i := range picked {
		if err := m.Delete(&picked[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %+v: %w", picked[i], err)
		}
	}
	return nil
}

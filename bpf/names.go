package bpf

import "fmt"

// enumName is the String of the numbered kinds the programs share with
// this package (events, operations, protocols): the name in names, else
// prefix-N, so that a value a newer program sends still reads as a number.
func enumName[T ~uint8 | ~uint32](v T, names map[T]string, prefix string) string {
	if s, ok := names[v]; ok {
		return s
	}
	return fmt.Sprintf("%s-%d", prefix, uint64(v))
}

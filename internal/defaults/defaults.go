// Package defaults fills unset option fields. Options structs across the
// agent treat a zero or negative size, count or duration as "not set"; Set is
// that one rule, so each New reads as a list of defaults.
package defaults

// Number is what Set fills: sizes, counts, rates and durations
// (time.Duration is an ~int64).
type Number interface {
	~int | ~int32 | ~int64 | ~uint32 | ~uint64 | ~float64
}

// Set stores d in *v when *v is zero or negative.
func Set[T Number](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

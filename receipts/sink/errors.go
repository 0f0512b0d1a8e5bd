package sink

import "errors"

// Errors of reading and writing a Store, for every kind of sink.
var (
	// ErrConflict: the sink holds another record (other bytes) for a
	// batch's checkpoint; what it holds is left as it is.
	ErrConflict = errors.New("the sink holds another record for this checkpoint")
	// ErrDamaged: a record of the sink is not one Put writes (damaged, or
	// foreign to the sink). Readers fail closed on it, naming the record.
	ErrDamaged = errors.New("not a receipt sink record")
)

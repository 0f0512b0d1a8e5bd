package bpf

import "errors"

// HoldPendingSlots marks every pending slot as held by cookie, one no socket
// has, so that a test can drive connects through the orig_pending overflow.
func (o *Objects) HoldPendingSlots(cookie uint64) error {
	for i := uint32(0); i < o.objs.PendingSlots.MaxEntries(); i++ {
		var s chioPendingSlot
		if err := o.objs.PendingSlots.Lookup(i, &s); err != nil {
			return err
		}
		s.Cookie = cookie
		if err := o.objs.PendingSlots.Put(i, &s); err != nil {
			return err
		}
	}
	return nil
}

// FailHandoverAt makes Handover fail before the i-th link, until the
// returned function is called.
func FailHandoverAt(i int) (restore func()) {
	handoverFault = func(n int) error {
		if n == i {
			return errors.New("injected handover failure")
		}
		return nil
	}
	return func() { handoverFault = nil }
}

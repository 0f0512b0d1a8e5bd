package agent

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/backbay-labs/chio-agent/bpf"
)

// refusalTakeInterval is how often the agent takes the refusals the kernel
// holds pending (the datapath's event interval): a flood's count is
// receipted within about two of them even when no later refusal comes.
const refusalTakeInterval = time.Second

// refusalWriters write the receipts of kernel refusals side by side, so
// that the receipt log's group commit makes one of many (a flood of
// distinct destinations is one receipt each).
const refusalWriters = 64

// readEvents turns kernel refusals into receipts until the reader is closed
// or flushed (Close). It starts once the workloads are known (see
// UnprotectStale): the pinned ring may hold refusals made while no agent ran,
// and their workload ids mean nothing until the workloads are protected
// again.
func (a *Agent) readEvents() {
	select {
	case <-a.known:
	case <-a.ctx.Done():
		return
	}
	for {
		e, err := a.events.Read()
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, bpf.ErrFlushed) {
				return
			}
			a.proxy.errs.add(err)
			continue
		}
		a.refusalQ <- e
	}
}

// writeRefusals writes the receipts of the refusals queued by readEvents
// and takePending until the queue is closed (Close).
func (a *Agent) writeRefusals() {
	for e := range a.refusalQ {
		a.kernelRefusal(e)
	}
}

// takeRefusals takes the kernel's pending refusals every interval until ctx
// ends (Close then takes the rest).
func (a *Agent) takeRefusals(ctx context.Context) {
	t := time.NewTicker(refusalTakeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.takePending(false)
		}
	}
}

// takePending writes the receipts of the refusals the kernel holds pending
// (all of them with final).
func (a *Agent) takePending(final bool) {
	evs, err := a.objs.TakeRefusals(final)
	if err != nil {
		a.proxy.errs.add(err)
	}
	for _, e := range evs {
		a.refusalQ <- e
	}
}

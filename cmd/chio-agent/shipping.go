package main

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/ship"
)

// shipDrain bounds how long a stopping command waits to ship its last
// sealed batches; past it they stay in the log for the next run.
const shipDrain = 5 * time.Second

// shipping is a running shipper of the node agent's log, nil for a local
// sink.
type shipping struct{ s *ship.Shipper }

// startShipping starts shipping l's sealed batches when the sink is NATS or
// a store (dynamodb://, s3://, gs://, azblob://). A malformed sink, an
// unreadable credential or servers that refuse it stop the start;
// unreachable servers do not (the backlog stays local).
func startShipping(l *receipts.Log, c *config.Common, logger logrus.FieldLogger) (*shipping, error) {
	o, ok := c.ShipOptions()
	if !ok {
		return nil, nil
	}
	o.Logger = logger
	s, err := ship.New(l, o)
	if err != nil {
		return nil, err
	}
	s.Start()
	logger.WithField("to", s.Subject()).WithField("servers", s.Status().Servers).Info("shipping sealed receipt batches")
	return &shipping{s: s}, nil
}

// shipper is the running shipper, nil for none.
func (p *shipping) shipper() *ship.Shipper {
	if p == nil {
		return nil
	}
	return p.s
}

// stop seals l's tail, ships it (bounded) and stops.
func (p *shipping) stop(l *receipts.Log) {
	if p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), shipDrain)
	defer cancel()
	l.Flush(ctx, true)
	p.s.Stop(shipDrain)
}

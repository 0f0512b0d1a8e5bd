package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/backbay-labs/chio-agent/internal/sniff"
	"github.com/backbay-labs/chio-agent/kernel"
	"github.com/backbay-labs/chio-agent/receipts"
)

// finish writes the receipt, then acts on the decision. No receipt, no
// connection: if the receipt cannot be written the connection is refused.
func (p *proxy) finish(ctx context.Context, cn *conn, start time.Time) {
	if cn.eg.Outcome.Verdict == kernel.VerdictAllow {
		// An allowed connection moves from pending to relayed, if a relay
		// slot is free; if not, it is refused, and the receipt says why.
		if bound := p.admitRelay(cn.w); bound != "" {
			out := cn.eg.Outcome
			cn.eg = cn.snap.DecideEgress(ctx, kernel.Seen{Event: cn.eg.Event, Decided: &kernel.Outcome{
				Verdict: kernel.VerdictDeny, PolicyDecision: out.PolicyDecision, Guard: GuardLimit,
				MatchedRule: out.MatchedRule, Pattern: out.Pattern,
				Reason: "allowed by the policy, refused for now: " + p.boundReason(bound)}})
		} else {
			cn.relaying = true
			cn.pending = false
			p.releasePending(cn.w)
		}
	}
	d := cn.decision(start, firstNonEmpty(cn.sniff.SNI, cn.sniff.Host), cn.eg.Outcome)
	if cn.eg.Outcome.Verdict == kernel.VerdictAllow && p.log.Mode() == receipts.ModeAsync {
		// Async receipts do not hold the decision up, so neither does
		// making and signing them: the log's committer does both
		// (queueReceipt), in a place reserved in the log first, so that a crash before the receipt is
		// written is still counted as a loss. The log bounds the places;
		// past the bound (or if the log refuses) the receipt is written in
		// line below. The dial goes first: on two cores, work beside it
		// delays the handshake's wakeup more than it saves.
		if res, err := p.log.Reserve(); err == nil {
			up, err := p.dial(ctx, cn)
			p.queueReceipt(cn, d, res)
			p.counts.allowed.Add(1)
			dialed := make(chan dialResult, 1)
			dialed <- dialResult{up, err}
			p.connect(ctx, cn, "", dialed)
			return
		}
	}
	// An allowed connection's upstream dial overlaps the receipt's signing
	// and commit: nothing is sent upstream until the receipt is written
	// (durable in sync mode), and if it cannot be written the upstream
	// connection is closed unused.
	var dialed chan dialResult
	if cn.eg.Outcome.Verdict == kernel.VerdictAllow {
		dialed = p.dialAsync(ctx, cn)
	}
	if err := p.record(ctx, &cn.eg, &d); err != nil {
		if dialed != nil {
			if r := <-dialed; r.up != nil {
				r.up.Close()
			}
		}
		d.Verdict = kernel.VerdictDeny
		p.counts.failed.Add(1)
		p.report(d)
		resetClose(cn.client)
		return
	}
	if cn.eg.Outcome.Verdict != kernel.VerdictAllow {
		p.counts.denied.Add(1)
		p.report(d)
		p.refuse(cn, d.ReceiptID)
		return
	}
	p.counts.allowed.Add(1)
	p.report(d) // as decided; the relay may run for hours
	p.connect(ctx, cn, d.ReceiptID, dialed)
}

// queueReceipt hands the receipt of an allowed connection, for which res
// holds the place, to the log's committer (async mode): the committer makes
// and signs it in the batch it commits next, on its own thread (locked, at
// low priority), and the decision is reported once its receipt is made.
// Nothing of the receipt runs on the connection's goroutines, and no
// goroutine wakes for it but the committer, once per batch. The log's
// reservations (Reserve) bound what can wait: past that, receipts are
// written in line.
func (p *proxy) queueReceipt(cn *conn, d Decision, res *receipts.Reservation) {
	res.AppendLater(func() (*kernel.Prepared, error) {
		prep, err := cn.eg.Receipt()
		if err != nil {
			p.receiptFailed(&d, err)
		} else {
			d.ReceiptID = prep.ID()
		}
		p.report(d)
		return prep, err
	})
}

func (p *proxy) report(d Decision) {
	if m := p.metrics; m != nil {
		n := float64(max(d.Count, 1))
		m.decisions.WithLabelValues(d.Workload, d.Verdict, d.Guard).Add(n)
		if d.Transport == kernel.TransportTCP && d.Count == 0 && !d.Time.IsZero() {
			m.decisionTime.Observe(p.now().Sub(d.Time).Seconds())
		}
	}
	if p.onDecide != nil {
		p.onDecide(d)
	}
	if !kernel.LevelEnabled(p.logger, logrus.InfoLevel) {
		return // the fields below would be built to be dropped
	}
	p.logger.WithFields(logrus.Fields{
		"workload": d.Workload, "pid": d.PID, "comm": d.Comm, "dst": d.Dst.String(),
		"name": d.Name, "verdict": d.Verdict, "rule": d.MatchedRule, "receipt": d.ReceiptID,
	}).Info(d.Reason)
}

// record writes the receipt of a decision, under the policy snapshot that
// made it, and fills d's receipt fields. A receipt that cannot be written
// is counted, kept among the last errors and noted in d; the caller then
// refuses the connection.
//
// The write is not cut short by ctx's cancellation (the agent shutting
// down): once a receipt is queued the log writes it, and an error here must
// mean that it was not written. Close waits for these writes; a log that is
// closed or failed still answers at once.
func (p *proxy) record(ctx context.Context, eg *kernel.Egress, d *Decision) error {
	id, seq, err := p.receipt(context.WithoutCancel(ctx), eg)
	d.ReceiptID, d.Seq = id, seq
	if err != nil {
		p.receiptFailed(d, err)
	}
	return err
}

// receiptFailed counts a receipt that could not be written, keeps it among
// the last errors and notes it in d.
func (p *proxy) receiptFailed(d *Decision, err error) {
	p.counts.receiptErrors.Add(1)
	if p.metrics != nil {
		p.metrics.receiptErrors.Inc()
	}
	p.errs.add(fmt.Errorf("receipt for %s: %w", d.Dst, err))
	d.Err = "receipt not written: " + err.Error()
}

// decision describes cn, decided as out, for reports.
func (cn *conn) decision(at time.Time, name string, out kernel.Outcome) Decision {
	return Decision{
		Time:        at,
		Workload:    cn.w.name,
		PID:         cn.orig.PID,
		Comm:        cn.orig.Comm,
		Dst:         cn.orig.Dst,
		Transport:   kernel.TransportTCP,
		Protocol:    string(cn.sniff.Protocol),
		Name:        name,
		Verdict:     out.Verdict,
		Guard:       out.Guard,
		MatchedRule: out.MatchedRule,
		Reason:      out.Reason,
	}
}

// receipt makes and appends the receipt of one decision, returning its id
// and sequence number, through Log.AppendPrepared: it returns once the
// receipt is durable in sync mode and once it is accepted in async mode.
func (p *proxy) receipt(ctx context.Context, eg *kernel.Egress) (string, uint64, error) {
	prep, err := eg.Receipt()
	if err != nil {
		return "", 0, err
	}
	seq, err := p.log.AppendPrepared(ctx, prep)
	return prep.ID(), seq, err
}

// refuse ends a denied connection the way its protocol understands: an
// access_denied alert for TLS, a 403 with the reason and receipt id for HTTP,
// a reset for anything else.
func (p *proxy) refuse(cn *conn, receiptID string) {
	c := cn.client
	c.SetWriteDeadline(p.now().Add(2 * time.Second))
	switch cn.sniff.Protocol {
	case sniff.ProtocolTLS:
		// A fatal access_denied(49) alert in a TLS 1.2-framed record, which
		// every TLS client can read before its handshake.
		c.Write([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49})
		c.CloseWrite()
		drainBriefly(c)
	case sniff.ProtocolHTTP:
		body, _ := json.Marshal(map[string]string{
			"error":      "chio_access_denied",
			"message":    cn.eg.Outcome.Reason,
			"reason":     cn.eg.Outcome.Reason,
			"guard":      cn.eg.Outcome.Guard,
			"receipt_id": receiptID,
		})
		fmt.Fprintf(c, "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: %d\r\nX-Chio-Receipt-Id: %s\r\nConnection: close\r\n\r\n%s",
			len(body), receiptID, body)
		c.CloseWrite()
		drainBriefly(c)
	default:
		resetClose(c)
	}
}

// drainBriefly lets the client read what was written before the close, so
// the kernel does not turn unread input into a reset that eats our reply.
func drainBriefly(c *net.TCPConn) {
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.Copy(io.Discard, io.LimitReader(c, 1<<20))
}

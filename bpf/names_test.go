package bpf

import "testing"

// TestEnumNames pins the names the agent writes into receipts and logs, and
// the numbered form of a value this build does not know.
func TestEnumNames(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{EventTCPDenied.String(), "tcp_denied"},
		{EventUnclassified.String(), "unclassified"},
		{EventKind(99).String(), "event-99"},
		{InboundListen.String(), "listen"},
		{InboundOp(7).String(), "inbound-op-7"},
		{ProtoUDP.String(), "udp"},
		{Proto(255).String(), "proto-255"},
		{UnclassifiedSendmsg.String(), "sendmsg"},
		{UnclassifiedOp(0).String(), "op-0"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

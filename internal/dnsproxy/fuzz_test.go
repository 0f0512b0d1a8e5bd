package dnsproxy

import (
	"testing"

	"github.com/miekg/dns"
)

func seedMsgs(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("api.allowed.test.", dns.TypeA)
	q.SetEdns0(4096, true)
	b, _ := q.Pack()
	f.Add(b)
	r := new(dns.Msg)
	r.SetReply(q)
	r.Answer = []dns.RR{mustRR("api.allowed.test. 300 IN CNAME a.allowed.test."), mustRR("a.allowed.test. 300 IN A 192.0.2.1"),
		mustRR("api.allowed.test. 300 IN HTTPS 1 . ipv4hint=192.0.2.9 ipv6hint=2001:db8::9")}
	b, _ = r.Pack()
	f.Add(b)
	f.Add([]byte("garbage"))
}

// FuzzParseQuery: a workload's message is a query or an error, never a
// panic; a query gives an upstream question and a refusal that pack.
func FuzzParseQuery(f *testing.F) {
	seedMsgs(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseQuery(b)
		if err != nil {
			return
		}
		if len(m.Question) != 1 || m.Response {
			t.Fatalf("accepted %v", m)
		}
		if _, err := upstreamQuery(m).Pack(); err != nil {
			t.Fatalf("upstream query does not pack: %v", err)
		}
		if refusal(m, dns.RcodeRefused).Id != m.Id {
			t.Fatal("refusal id")
		}
	})
}

// FuzzReadAnswer: whatever an upstream answers, reading its chain ends,
// within maxChain, and the reply to the client is made of its records.
func FuzzReadAnswer(f *testing.F) {
	seedMsgs(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		resp := new(dns.Msg)
		if resp.Unpack(b) != nil || len(resp.Question) == 0 {
			return
		}
		a := readAnswer(resp.Question[0].Name, resp)
		if len(a.chain) > maxChain || len(a.kept) > len(resp.Answer) {
			t.Fatalf("chain %d kept %d of %d", len(a.chain), len(a.kept), len(resp.Answer))
		}
		req := new(dns.Msg)
		req.SetQuestion(dns.Fqdn(resp.Question[0].Name), resp.Question[0].Qtype)
		reply(req, resp, a, "udp")
	})
}

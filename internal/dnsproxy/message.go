package dnsproxy

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// maxChain bounds the names an answer may lead through (CNAME, DNAME,
// HTTPS/SVCB targets): a longer chain is cut there, and its addresses are
// not told.
const maxChain = 16

// parseQuery reads one message a workload sent. It is a query only if it
// unpacks whole, is not a response, has opcode QUERY, exactly one question,
// nothing in its answer or authority sections, and nothing but an OPT
// record in its additional section.
func parseQuery(b []byte) (*dns.Msg, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotQuery, err)
	}
	switch {
	case m.Response:
		return nil, fmt.Errorf("%w: the message is a response", ErrNotQuery)
	case m.Opcode != dns.OpcodeQuery:
		return nil, fmt.Errorf("%w: opcode %s", ErrNotQuery, opcodeName(m.Opcode))
	case len(m.Question) != 1:
		return nil, fmt.Errorf("%w: %d questions", ErrNotQuery, len(m.Question))
	case len(m.Answer) > 0 || len(m.Ns) > 0:
		return nil, fmt.Errorf("%w: records in the answer or authority section", ErrNotQuery)
	}
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			return nil, fmt.Errorf("%w: a %s record in the additional section", ErrNotQuery, dns.TypeToString[rr.Header().Rrtype])
		}
	}
	return m, nil
}

func opcodeName(op int) string {
	if s, ok := dns.OpcodeToString[op]; ok {
		return s
	}
	return fmt.Sprintf("%d", op)
}

// typeName is a query type's mnemonic, or TYPEn (RFC 3597) for one without.
func typeName(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return fmt.Sprintf("TYPE%d", t)
}

func rcodeName(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rc)
}

// upstreamQuery is the message sent upstream for req: a fresh one with a new
// id, the question, the recursion and checking flags, and an EDNS0 record
// with no options when the client sent one. Nothing else a workload wrote
// (EDNS options, padding, its id) leaves the node.
func upstreamQuery(req *dns.Msg) *dns.Msg {
	q := req.Question[0]
	up := new(dns.Msg)
	up.SetQuestion(q.Name, q.Qtype)
	up.Question[0].Qclass = q.Qclass
	up.RecursionDesired = req.RecursionDesired
	up.CheckingDisabled = req.CheckingDisabled
	size, do := uint16(dns.MinMsgSize), false
	if opt := req.IsEdns0(); opt != nil {
		size, do = max(opt.UDPSize(), dns.MinMsgSize), opt.Do()
	}
	up.SetEdns0(max(size, 1232), do) // ask for more than the client may take; the reply is cut to its size
	return up
}

// refusal is the reply to req with rcode and nothing else.
func refusal(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	m.RecursionAvailable = true
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(clientSize(req), opt.Do())
	}
	return m
}

// clientSize is the largest UDP answer the client said it takes.
func clientSize(req *dns.Msg) uint16 {
	if opt := req.IsEdns0(); opt != nil {
		return max(opt.UDPSize(), dns.MinMsgSize)
	}
	return dns.MinMsgSize
}

// answer is what an upstream's reply told: the names its chain led through
// after QNAME, the addresses of those names, and the shortest TTL among the
// records that told them.
type answer struct {
	chain []string
	addrs []netip.Addr
	ttl   uint32
	kept  []dns.RR // the answer section as sent on: records of the chain's names only
}

// readAnswer follows the reply's answer section from qname: CNAME and DNAME
// records of the current name lead on; A and AAAA records of any name on
// the chain are its addresses; HTTPS and SVCB records of the chain's names
// add their target (unless ".") to the chain and their address hints to
// the addresses. Records of names off the chain are dropped: the workload
// is told nothing about names the policy did not see.
func readAnswer(qname string, resp *dns.Msg) answer {
	var a answer
	on := map[string]bool{strings.ToLower(dns.Fqdn(qname)): true}
	add := func(name string) bool {
		n := strings.ToLower(dns.Fqdn(name))
		if on[n] || len(a.chain) >= maxChain {
			return false
		}
		on[n] = true
		a.chain = append(a.chain, name)
		return true
	}
	ttl := func(h *dns.RR_Header) {
		if a.ttl == 0 || h.Ttl < a.ttl {
			a.ttl = h.Ttl
		}
	}
	addr := func(ip []byte) {
		if ad, ok := netip.AddrFromSlice(ip); ok {
			a.addrs = append(a.addrs, ad.Unmap())
		}
	}
	// The chain may be out of order in the section: walk it until no
	// record adds a name.
	used := make([]bool, len(resp.Answer))
	for grew := true; grew; {
		grew = false
		for i, rr := range resp.Answer {
			h := rr.Header()
			owner := strings.ToLower(h.Name)
			if used[i] {
				continue
			}
			switch r := rr.(type) {
			case *dns.CNAME:
				if on[owner] {
					used[i], grew = true, true
					add(r.Target)
					ttl(h)
				}
			case *dns.DNAME:
				for n := range on {
					if rest, ok := strings.CutSuffix(n, "."+owner); ok {
						used[i], grew = true, true
						add(rest + "." + r.Target)
						ttl(h)
						break
					}
				}
			case *dns.SVCB:
				if on[owner] {
					used[i], grew = true, true
					a.svcb(r.Target, r.Value, add, addr)
					ttl(h)
				}
			case *dns.HTTPS:
				if on[owner] {
					used[i], grew = true, true
					a.svcb(r.Target, r.Value, add, addr)
					ttl(h)
				}
			}
		}
	}
	for i, rr := range resp.Answer {
		h := rr.Header()
		switch r := rr.(type) {
		case *dns.A:
			if on[strings.ToLower(h.Name)] {
				used[i] = true
				addr(r.A)
				ttl(h)
			}
		case *dns.AAAA:
			if on[strings.ToLower(h.Name)] {
				used[i] = true
				addr(r.AAAA)
				ttl(h)
			}
		default:
			if !used[i] && on[strings.ToLower(h.Name)] {
				used[i] = true // another type of a chain name (TXT, MX...)
				ttl(h)
			}
		}
		if used[i] {
			a.kept = append(a.kept, rr)
		}
	}
	return a
}

func (a *answer) svcb(target string, kv []dns.SVCBKeyValue, add func(string) bool, addr func([]byte)) {
	if target != "." && target != "" {
		add(target)
	}
	for _, v := range kv {
		switch h := v.(type) {
		case *dns.SVCBIPv4Hint:
			for _, ip := range h.Hint {
				addr(ip.To4())
			}
		case *dns.SVCBIPv6Hint:
			for _, ip := range h.Hint {
				addr(ip.To16())
			}
		}
	}
}

// reply is the upstream's answer as sent to the client: its id and
// question, the chain's records, an SOA in authority for negative caching,
// and nothing in additional but an OPT record; cut to the client's UDP size
// (with TC set) when it came over UDP.
func reply(req, resp *dns.Msg, a answer, transport string) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Rcode = resp.Rcode
	m.Authoritative = resp.Authoritative
	m.RecursionAvailable = resp.RecursionAvailable
	m.AuthenticatedData = resp.AuthenticatedData && req.AuthenticatedData
	m.Answer = a.kept
	for _, rr := range resp.Ns {
		if rr.Header().Rrtype == dns.TypeSOA {
			m.Ns = append(m.Ns, rr)
		}
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(clientSize(req), opt.Do())
	}
	if transport != "tcp" {
		m.Truncate(int(clientSize(req)))
	}
	return m
}

// StaticTTL is the TTL of answers from Options.Hosts.
const StaticTTL = 60

// staticAnswer answers req from a static host entry: its addresses of the
// type asked (A: IPv4, AAAA: IPv6), none for another type.
func staticAnswer(req *dns.Msg, as []netip.Addr) *dns.Msg {
	q := req.Question[0]
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative, m.RecursionAvailable = true, true
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: StaticTTL}
	}
	for _, a := range as {
		a = a.Unmap()
		switch {
		case q.Qtype == dns.TypeA && a.Is4():
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: a.AsSlice()})
		case q.Qtype == dns.TypeAAAA && a.Is6():
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: a.AsSlice()})
		}
	}
	return m
}

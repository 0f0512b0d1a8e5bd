package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// exchange asks the upstreams, in order, until one answers: over TCP for a
// query that came over TCP, else over UDP and, when that answer is
// truncated, again over TCP to the same upstream. Each attempt is bounded
// by timeout (and by ctx).
func (p *Proxy) exchange(ctx context.Context, up *dns.Msg, transport string) (*dns.Msg, netip.AddrPort, error) {
	var errs []error
	for _, u := range p.opts.Upstreams {
		addr := u.String()
		net := "udp"
		if transport == "tcp" {
			net = "tcp"
		}
		resp, err := p.ask(ctx, net, up, addr)
		if err == nil && resp.Truncated && net == "udp" {
			resp, err = p.ask(ctx, "tcp", up, addr)
		}
		if err == nil {
			return resp, u, nil
		}
		errs = append(errs, fmt.Errorf("%s over %s: %w", addr, net, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, netip.AddrPort{}, fmt.Errorf("%w: %w", ErrNoUpstream, errors.Join(errs...))
}

// ask sends one query to one upstream and checks that the answer is to it.
func (p *Proxy) ask(ctx context.Context, net string, up *dns.Msg, addr string) (*dns.Msg, error) {
	c := &dns.Client{Net: net, Timeout: p.opts.Timeout, UDPSize: 4096}
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	resp, _, err := c.ExchangeContext(ctx, up, addr)
	if err != nil {
		return nil, err
	}
	// miekg/dns checks the id; the question must be ours too, or the
	// chain would be read from another name's answer.
	if len(resp.Question) != 1 || !dns.IsFqdn(resp.Question[0].Name) ||
		!equalName(resp.Question[0].Name, up.Question[0].Name) || resp.Question[0].Qtype != up.Question[0].Qtype {
		return nil, fmt.Errorf("answer to another question")
	}
	return resp, nil
}

func equalName(a, b string) bool { return dns.CanonicalName(a) == dns.CanonicalName(b) }

// defaultTimeout bounds one attempt at one upstream.
const defaultTimeout = 2 * time.Second

package config

import (
	"strings"
	"testing"
)

// TestAgentDNSSection: the DNS proxy is on unless switched off, and bad
// values name their key.
func TestAgentDNSSection(t *testing.T) {
	c, err := Parse([]byte("agent:\n  resolvers: [\"127.0.0.1:53\"]\n"), env(nil))
	if err != nil || !c.Agent.DNS.ProxyOn() {
		t.Fatalf("default: %v, proxy on %v", err, c.Agent.DNS.ProxyOn())
	}
	c, err = Parse([]byte("agent:\n  dns: {proxy: false, block_rcode: refused, rate: 5, ttl_floor: 10s, ttl_cap: 1m}\n"), env(nil))
	if err != nil || c.Agent.DNS.ProxyOn() || c.Agent.DNS.BlockRcode != "refused" || c.Agent.DNS.Rate != 5 {
		t.Fatalf("set: %v, %+v", err, c.Agent.DNS)
	}
	for body, want := range map[string]string{
		"agent:\n  dns: {block_rcode: servfail}\n":      "agent.dns.block_rcode",
		"agent:\n  dns: {ttl_floor: 1h, ttl_cap: 1m}\n": "agent.dns.ttl_cap",
		"agent:\n  dns: {rate: -1}\n":                   "must not be negative",
		"agent:\n  dns: {proxi: false}\n":               `unknown key "proxi"`,
	} {
		if _, err := Parse([]byte(body), env(nil)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", body, err, want)
		}
	}
}

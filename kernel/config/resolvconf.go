package config

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/backbay-labs/chio-agent/internal/regfile"
)

// SystemResolvers returns the nameservers of a resolv.conf (port 53), the
// DNS servers a process on this host would use. `exec` lets its command
// reach them when the configuration names none, so that an unmodified
// command can still resolve names while everything else over UDP is refused.
func SystemResolvers(path string) ([]netip.AddrPort, error) {
	f, err := regfile.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read resolvers: %w", err)
	}
	defer f.Close()
	return parseResolvConf(f)
}

func parseResolvConf(r io.Reader) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue // a malformed line is ignored, as the C library does
		}
		out = append(out, netip.AddrPortFrom(a.WithZone(""), 53))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read resolvers: %w", err)
	}
	return out, nil
}

package hushspec

import (
	"errors"
	"testing"
)

func TestNormalizeHost(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"api.example.com", "api.example.com"},
		{"API.Example.COM", "api.example.com"},
		{"api.example.com.", "api.example.com"},                   // trailing dot
		{"https://api.example.com/v1/x?q=1#f", "api.example.com"}, // URL to host
		{"https://user:pw@api.example.com:8443/", "api.example.com"},
		{"user@api.example.com", "api.example.com"},
		{"api.example.com:443", "api.example.com"},
		{"api.example.com:", "api.example.com"},
		{"//api.example.com/x", "api.example.com"},
		{"_dmarc.example.com", "_dmarc.example.com"},
		// Full, context-sensitive lowercase: final sigma at the end of a
		// label, medial sigma inside it, each label cased on its own.
		{"ΣΑΣ.gr", "xn--mxa8ab.gr"},
		{"ΣΑΣ.ΣΑΣ", "xn--mxa8ab.xn--mxa8ab"},
		{"σας.gr", "xn--mxa8ab.gr"},
		{"σασ.gr", "xn--mxa9ab.gr"}, // a medial sigma written at the end stays medial
		// Turkish dotted capital I lowercases to i + U+0307 (SpecialCasing),
		// not to a plain i as simple case mapping would.
		{"İSTANBUL.tr", "xn--istanbul-o0e.tr"},
		{"istanbul.tr", "istanbul.tr"},
		// ß is kept (non-transitional UTS #46), not folded to ss.
		{"Straße.de", "xn--strae-oqa.de"},
		{"STRASSE.de", "strasse.de"},
		// IDN and punycode input meet in the same A-label form.
		{"bücher.example", "xn--bcher-kva.example"},
		{"BÜCHER.example", "xn--bcher-kva.example"},
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"XN--BCHER-KVA.example", "xn--bcher-kva.example"},
		{"例え。テスト", "xn--r8jz45g.xn--zckzah"}, // ideographic full stop
		// IP literals.
		{"10.0.0.1", "10.0.0.1"},
		{"10.0.0.1:8080", "10.0.0.1"},
		{"10.0.0.1.", "10.0.0.1"},
		{"[::1]", "::1"},
		{"[::1]:443", "::1"},
		{"::1", "::1"},
		{"http://[2001:DB8::1]:80/", "2001:db8::1"},
		{"[fe80::1%25eth0]:80", "fe80::1"}, // zone removed
		{"fe80::1%eth0", "fe80::1"},
		{"::ffff:10.0.0.1", "10.0.0.1"}, // v4-mapped unmapped
		{"[::ffff:a00:1]", "10.0.0.1"},
	} {
		got, err := NormalizeHost(tc.in)
		if err != nil {
			t.Errorf("NormalizeHost(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("NormalizeHost(%q) = %q, want %q", tc.in, got, tc.want)
		}
		again, err := NormalizeHost(got)
		if err != nil || again != got {
			t.Errorf("not idempotent: %q -> %q -> %q, %v", tc.in, got, again, err)
		}
	}
}

func TestNormalizeHostRejects(t *testing.T) {
	for _, in := range []string{
		"", ".", "a..b", "exa mple.com", "a\\b.com", "\\b.com", "a%41.com", "a!b.com",
		"-a.com", "a-.com", "ab--c.com", "xn--abc.com", // bad hyphens, bad punycode
		"127.1", "0x7f.0.0.1", "2130706433", "01.2.3.4", "example.0x10", // numeric hosts
		"[::1", "[example.com]", "[::1]x", "host:99999", "host:ab", "1:2:3",
		"ftp ://x", "a\x00b.com", "\xff.com",
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com", // 64-byte label
	} {
		if got, err := NormalizeHost(in); err == nil {
			t.Errorf("NormalizeHost(%q) = %q, want an error", in, got)
		} else if !errors.Is(err, ErrInvalidHost) {
			t.Errorf("NormalizeHost(%q): %v does not wrap ErrInvalidHost", in, err)
		}
	}
}

func TestHostPatterns(t *testing.T) {
	s := newHostSet()
	for _, p := range []string{
		"exact.example.com", "*.star.example.com", "**.deep.example.com",
		"api-*.glob.example.com", "a.*.mid.example.com", "BÜCHER.example",
		"*.ΣΑΣ.gr", "10.1.2.3", "[2001:db8::1]", "*",
	} {
		if err := s.add(p); err != nil {
			t.Fatalf("add %q: %v", p, err)
		}
	}
	for _, tc := range []struct {
		target string
		want   string // matching pattern, "" for none
	}{
		{"exact.example.com", "exact.example.com"},
		{"EXACT.example.com.", "exact.example.com"},
		{"x.exact.example.com", ""},
		{"a.star.example.com", "*.star.example.com"},
		{"a.b.star.example.com", ""}, // * is exactly one label
		{"star.example.com", ""},     // never the apex
		{"a.deep.example.com", "**.deep.example.com"},
		{"a.b.c.deep.example.com", "**.deep.example.com"},
		{"deep.example.com", ""}, // ** never matches the apex either
		{"api-v1.glob.example.com", "api-*.glob.example.com"},
		{"api-.glob.example.com", ""}, // label would end with '-': not a host
		{"web.glob.example.com", ""},
		{"a.x.mid.example.com", "a.*.mid.example.com"},
		{"b.x.mid.example.com", ""},
		{"bücher.example", "BÜCHER.example"},
		{"xn--bcher-kva.example", "BÜCHER.example"},
		{"www.σας.gr", "*.ΣΑΣ.gr"},
		{"10.1.2.3", "10.1.2.3"},
		{"::ffff:10.1.2.3", "10.1.2.3"},
		{"10.1.2.4", ""},
		{"[2001:db8:0:0::1]:443", "[2001:db8::1]"},
		{"localhost", "*"}, // a lone * is one label
		{"1.2.3.4", ""},    // wildcards never match IP literals
	} {
		h, err := normalizeTarget(tc.target)
		if err != nil {
			if tc.want != "" {
				t.Errorf("%q: %v", tc.target, err)
			}
			continue
		}
		got, _ := s.match(h)
		if got != tc.want {
			t.Errorf("match(%q) = %q, want %q", tc.target, got, tc.want)
		}
	}
}

func TestHostPatternsRejected(t *testing.T) {
	for _, p := range []string{
		"a.**.example.com", "**x.example.com", "a**.example.com",
		"bü*.example", "*.exa mple.com", "*..example.com", "",
	} {
		if err := newHostSet().add(p); err == nil {
			t.Errorf("pattern %q accepted", p)
		}
	}
}

// TestHostPatternsOverIPs: a wildcard over an IP address is a valid
// pattern (core 3.14.2) that matches nothing, not even the address it
// seems to cover.
func TestHostPatternsOverIPs(t *testing.T) {
	for _, p := range []string{"*.1.2.3", "10.0.0.*", "10.*.*.1"} {
		s := newHostSet()
		if err := s.add(p); err != nil {
			t.Errorf("pattern %q refused: %v", p, err)
			continue
		}
		for _, target := range []string{"10.0.0.1", "9.1.2.3", "10.7.7.1"} {
			h, _ := normalizeTarget(target)
			if got, ok := s.match(h); ok {
				t.Errorf("%q matched %q", p, got)
			}
		}
		if len(s.never) != 1 {
			t.Errorf("%q not recorded as never matching", p)
		}
	}
	// In an egress target a backslash ends the authority (core 3.14.2
	// step 1); NormalizeHost, for host names, refuses it instead.
	if h, err := normalizeTarget(`a\b.com`); err != nil || h.name != "a" {
		t.Errorf(`normalizeTarget("a\\b.com") = %q, %v; want "a"`, h.name, err)
	}
}

func TestGlobLabel(t *testing.T) {
	for _, tc := range []struct {
		glob, s string
		want    bool
	}{
		{"*", "", true}, {"a*", "a", true}, {"a*b", "axxb", true}, {"a*b", "axxbc", false},
		{"*a*a*", "aa", true}, {"*a*a*", "a", false}, {"api-*-v*", "api-x-v2", true},
	} {
		if got := globLabel(tc.glob, tc.s); got != tc.want {
			t.Errorf("globLabel(%q, %q) = %v", tc.glob, tc.s, got)
		}
	}
}

func TestFastHostAgreesWithSlowPath(t *testing.T) {
	for _, in := range []string{"a.com", "a-b.c", "_x.y", "a.b.", "1a.com", "a.1b", "x--y.com", "A.COM", "A-.com", "1.2.3.4", "A.1"} {
		fast, err := normalizeTarget(in)
		slow, serr := slowNormalize(in)
		if (err == nil) != (serr == nil) || fast.name != slow.name {
			t.Errorf("%q: fast %q %v, slow %q %v", in, fast.name, err, slow.name, serr)
		}
	}
}

func TestNormalizeHostAfterIDNAMapping(t *testing.T) {
	// IDNA mapping deletes the soft hyphen: what is left is checked again.
	if got, err := NormalizeHost("1\u00ad.2.3.4"); err != nil || got != "1.2.3.4" {
		t.Errorf("NormalizeHost(1\\u00ad.2.3.4) = %q, %v; want the address 1.2.3.4", got, err)
	}
	for _, in := range []string{"0.\u00ad", "a.\u00ad.b", "\u00ad.example"} {
		if got, err := NormalizeHost(in); err == nil {
			t.Errorf("NormalizeHost(%q) = %q; want an empty-label error", in, got)
		}
	}
}

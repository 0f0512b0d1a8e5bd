package sniff

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
)

func (sn *sniffer) feedHTTP(buf []byte) (StopReason, bool) {
	for {
		i := bytes.IndexByte(buf[sn.scanned:], '\n')
		if i < 0 {
			sn.scanned = len(buf)
			return "", false
		}
		lf := sn.scanned + i
		sn.scanned = lf + 1
		if lf == 0 || buf[lf-1] != '\r' {
			// A bare LF ends lines for some servers and not for others; a
			// head they would split differently is refused, and at once,
			// since "\r\n\r\n" may never come.
			return sn.fail("bare LF in http head")
		}
		if !sn.lineChecked {
			// The request line alone can show the bytes are not HTTP/1.x
			// (HTTP/0.9, an HTTP/2 version), without waiting for a head.
			sn.lineChecked = true
			if why := sn.parseRequestLine(buf[:lf-1]); why != "" {
				return sn.fail(why)
			}
		}
		if lf >= 3 && string(buf[lf-3:lf+1]) == "\r\n\r\n" {
			if why := sn.parseHead(buf[:lf+1]); why != "" {
				return sn.fail(why)
			}
			return StopComplete, true
		}
	}
}

// parseRequestLine checks "METHOD SP request-target SP HTTP-version"
// (RFC 9112 §3) and records the method, target and version.
func (sn *sniffer) parseRequestLine(line []byte) string {
	rest := line[len(sn.method)+1:]
	sp := bytes.IndexByte(rest, ' ')
	if sp <= 0 {
		return "http request line malformed"
	}
	target, version := rest[:sp], rest[sp+1:]
	for _, c := range target {
		// URIs are ASCII (RFC 3986); raw spaces, controls and bytes above
		// 0x7e are what request smuggling and log injection are made of.
		if c <= ' ' || c >= 0x7f {
			return "http request target has a space, control or non-ASCII byte"
		}
	}
	switch string(version) {
	case "HTTP/1.1":
		sn.out.HTTPVersion = "HTTP/1.1"
	case "HTTP/1.0":
		sn.out.HTTPVersion = "HTTP/1.0"
	default:
		return fmt.Sprintf("http version %s not supported", quoteShort(version))
	}
	sn.out.Method = sn.method
	sn.out.Path = string(target)
	return ""
}

// parseHead checks the header lines of a complete head (request line
// already checked) and settles Host and HostPort.
func (sn *sniffer) parseHead(head []byte) string {
	lineEnd := bytes.Index(head, []byte("\r\n"))
	rest := head[lineEnd+2 : len(head)-2] // header lines, each ending "\r\n"
	var hostHeader []byte
	haveHost := false
	for len(rest) > 0 {
		end := bytes.Index(rest, []byte("\r\n"))
		line := rest[:end]
		rest = rest[end+2:]
		if line[0] == ' ' || line[0] == '\t' {
			// Obsolete line folding (RFC 9112 §5.2) could hide a Host value
			// on a continuation line; servers disagree on it.
			return "http header line folding"
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return "http header line without a name"
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		for _, c := range name {
			if !isTokenChar(c) {
				// Covers "Host : x": whitespace before the colon must be
				// refused (RFC 9112 §5.1), as servers read it differently.
				return fmt.Sprintf("http header name %s is not a token", quoteShort(name))
			}
		}
		for _, c := range value {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return fmt.Sprintf("http header %s has a control character", quoteShort(name))
			}
		}
		if !asciiEqualFold(name, "host") {
			continue
		}
		if haveHost {
			return "http request has two Host headers"
		}
		haveHost, hostHeader = true, value
	}

	authority, why := targetAuthority(sn.method, sn.out.Path)
	if why != "" {
		return why
	}
	if !haveHost && sn.out.HTTPVersion == "HTTP/1.1" && sn.method != "CONNECT" {
		// RFC 9112 §3.2 makes servers refuse this; CONNECT is spared, as
		// by net/http, because its target is the authority.
		return "HTTP/1.1 request without Host"
	}
	var host, port string
	if len(hostHeader) > 0 {
		var ok bool
		if host, port, ok = splitAuthority(string(hostHeader), false); !ok {
			return fmt.Sprintf("http Host header %s is not host[:port]", quoteShort(hostHeader))
		}
	}
	// An empty Host header is legal for a target without authority (RFC
	// 9112 §3.2) and names nothing: Host stays empty.
	if authority != "" {
		h, p, ok := splitAuthority(authority, sn.method == "CONNECT")
		if !ok {
			return fmt.Sprintf("http request target authority %s is not host[:port]", quoteShort([]byte(authority)))
		}
		if haveHost && !strings.EqualFold(h, host) {
			// The target wins by the RFC, but a server or proxy upstream
			// might go by the header: the policy must not see one name
			// while the request reaches another.
			return "http Host header disagrees with the request target"
		}
		host, port = h, p
	}
	sn.out.Host, sn.out.HostPort = host, port
	return ""
}

// targetAuthority returns the authority a request target carries (absolute
// form "scheme://authority/…", or the authority form of CONNECT), "" for the
// origin form "/…" and OPTIONS "*", or why the target is malformed.
func targetAuthority(method, target string) (string, string) {
	switch {
	case method == "CONNECT":
		return target, ""
	case target == "*":
		if method != "OPTIONS" {
			return "", "http request target * outside OPTIONS"
		}
		return "", ""
	case target[0] == '/':
		return "", ""
	}
	i := strings.Index(target, "://")
	if i <= 0 || !isScheme(target[:i]) {
		return "", "http request target is neither a path nor an absolute URI"
	}
	auth := target[i+3:]
	if j := strings.IndexAny(auth, "/?#"); j >= 0 {
		auth = auth[:j]
	}
	if auth == "" {
		return "", "http absolute request target without authority"
	}
	if strings.IndexByte(auth, '@') >= 0 {
		// Userinfo is deprecated for http(s) (RFC 9110 §4.2.4) and is the
		// classic way to make "trusted.com@evil.com" look like trusted.com.
		return "", "http request target has userinfo"
	}
	return auth, ""
}

// splitAuthority splits "host[:port]" with host a DNS name, an IPv4 literal
// or a bracketed IPv6 literal; host and port are substrings of s.
func splitAuthority(s string, requirePort bool) (host, port string, ok bool) {
	hostPart, havePort := s, false
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", false
		}
		host = s[1:end]
		switch after := s[end+1:]; {
		case after == "":
		case after[0] == ':':
			port, havePort = after[1:], true
		default:
			return "", "", false
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return "", "", false
		}
	} else {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			hostPart, port, havePort = s[:i], s[i+1:], true
		}
		if !validHostName(hostPart, true) {
			return "", "", false
		}
		host = hostPart
	}
	if requirePort && (!havePort || port == "") {
		return "", "", false
	}
	// An empty port ("host:") is allowed by RFC 3986 and means the default.
	if len(port) > 5 {
		return "", "", false
	}
	v := 0
	for _, c := range []byte(port) {
		if c < '0' || c > '9' {
			return "", "", false
		}
		v = v*10 + int(c-'0')
	}
	if v > 65535 {
		return "", "", false
	}
	return host, port, true
}

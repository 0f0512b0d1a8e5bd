package sniff

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

const (
	recordTypeHandshake  = 22
	handshakeClientHello = 1
	maxRecordPlaintext   = 1 << 14
	extServerName        = 0
	extALPN              = 16
	extSupportedVersions = 43
	extECH               = 0xfe0d
)

// tlsReassembly gathers the handshake bytes of complete records, since a
// ClientHello may be fragmented over several records (RFC 8446 §5.1).
type tlsReassembly struct {
	off int    // start of the first record not yet consumed
	hs  []byte // handshake bytes of the consumed records
}

func (sn *sniffer) feedTLS(buf []byte) (StopReason, bool) {
	t := &sn.tls
	for {
		rec := buf[t.off:]
		// Judge the header as soon as its bytes are in, so that junk after a
		// 0x16 ends at once instead of at the deadline.
		if len(rec) >= 2 && rec[1] != 3 {
			return sn.fail(fmt.Sprintf("tls record version major %d, not 3", rec[1]))
		}
		if len(rec) < 5 {
			return "", false
		}
		if rec[0] != recordTypeHandshake {
			// Handshake records may not be interleaved with other types
			// (RFC 8446 §5.1), and nothing may precede the ClientHello.
			return sn.fail(fmt.Sprintf("tls record type %d before the ClientHello ended", rec[0]))
		}
		n := int(rec[3])<<8 | int(rec[4])
		switch {
		case n == 0:
			return sn.fail("empty tls handshake record")
		case n > maxRecordPlaintext:
			return sn.fail(fmt.Sprintf("tls record of %d bytes exceeds 2^14", n))
		case t.off+5+n > sn.max:
			return StopLimit, true
		case len(rec) < 5+n:
			return "", false
		}
		payload := rec[5 : 5+n : 5+n]
		t.off += 5 + n
		if t.hs == nil {
			// The common case, one record: parse in place. The capped
			// capacity makes a later append copy instead of overwriting buf.
			t.hs = payload
		} else {
			t.hs = append(t.hs, payload...)
		}
		if len(t.hs) < 4 {
			continue
		}
		if t.hs[0] != handshakeClientHello {
			return sn.fail(fmt.Sprintf("first tls handshake message is type %d, not ClientHello", t.hs[0]))
		}
		need := 4 + (int(t.hs[1])<<16 | int(t.hs[2])<<8 | int(t.hs[3]))
		if 5+need > sn.max {
			return StopLimit, true
		}
		if len(t.hs) < need {
			continue
		}
		if len(t.hs) > need {
			// A server would take these bytes for a second handshake
			// message; what it does with them is not ours to guess.
			return sn.fail("tls handshake data after the ClientHello in its record")
		}
		if why := sn.parseClientHello(t.hs[4:need]); why != "" {
			return sn.fail(why)
		}
		return StopComplete, true
	}
}

// parseClientHello parses a ClientHello body (RFC 8446 §4.1.2, RFC 5246
// §7.4.1.2) into sn.out, or says why it is malformed. Fields are set only
// when the whole message is valid.
func (sn *sniffer) parseClientHello(body []byte) string {
	in := cryptobyte.String(body)
	var (
		legacyVersion                   uint16
		sessionID, suites, compressions cryptobyte.String
	)
	if !in.ReadUint16(&legacyVersion) || !in.Skip(32) {
		return "ClientHello truncated before the session id"
	}
	if !in.ReadUint8LengthPrefixed(&sessionID) || len(sessionID) > 32 {
		return "ClientHello session id malformed"
	}
	if !in.ReadUint16LengthPrefixed(&suites) || len(suites) < 2 || len(suites)%2 != 0 {
		return "ClientHello cipher suites malformed"
	}
	if !in.ReadUint8LengthPrefixed(&compressions) || len(compressions) < 1 {
		return "ClientHello compression methods malformed"
	}
	var (
		sni, alpnList cryptobyte.String
		ech           bool
		maxVersion    = legacyVersion
	)
	// Before TLS 1.3 a ClientHello may end here, without extensions.
	if !in.Empty() {
		var exts cryptobyte.String
		if !in.ReadUint16LengthPrefixed(&exts) || !in.Empty() {
			return "ClientHello extensions block malformed"
		}
		// A second server_name could be read by the server while the policy
		// saw the first, so every duplicate is refused (RFC 8446 §4.2). One
		// bit per extension type: 8 KiB on the stack, no allocation.
		var seen [1 << 16 / 64]uint64
		for !exts.Empty() {
			var typ uint16
			var data cryptobyte.String
			if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
				return "ClientHello extension truncated"
			}
			if seen[typ/64]&(1<<(typ%64)) != 0 {
				return fmt.Sprintf("ClientHello repeats extension %d", typ)
			}
			seen[typ/64] |= 1 << (typ % 64)
			var why string
			switch typ {
			case extServerName:
				sni, why = parseServerName(data)
			case extALPN:
				alpnList, why = checkALPN(data)
			case extSupportedVersions:
				maxVersion, why = parseSupportedVersions(data)
			case extECH:
				// ECHClientHello starts with its type: outer (0) or inner (1).
				if len(data) == 0 || data[0] > 1 {
					why = "encrypted_client_hello extension malformed"
				}
				ech = true
			}
			if why != "" {
				return why
			}
		}
	}
	sn.out.SNI = lowerASCII(sni)
	sn.out.ALPN = splitALPN(alpnList)
	sn.out.ECH = ech
	sn.out.TLSVersion = legacyVersion
	sn.out.TLSMaxVersion = maxVersion
	return ""
}

// parseServerName returns the single host_name of a server_name extension
// (RFC 6066 §3).
func parseServerName(data cryptobyte.String) (cryptobyte.String, string) {
	var list, name cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return nil, "server_name extension malformed"
	}
	for !list.Empty() {
		var typ uint8
		var entry cryptobyte.String
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&entry) {
			return nil, "server_name extension malformed"
		}
		if typ != 0 {
			// No other name type is defined; one would be for a future
			// server to read, and carries no name the policy knows.
			continue
		}
		if name != nil {
			return nil, "server_name has more than one host_name"
		}
		// RFC 6066 forbids the trailing dot, which also keeps
		// "example.com." from slipping past a rule for "example.com".
		if !validHostName(entry, false) {
			return nil, fmt.Sprintf("server_name %s is not a host name", quoteShort(entry))
		}
		name = entry
	}
	return name, ""
}

// checkALPN validates an ALPN extension (RFC 7301 §3.1) and returns its
// protocol_name_list.
func checkALPN(data cryptobyte.String) (cryptobyte.String, string) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return nil, "application_layer_protocol_negotiation extension malformed"
	}
	for rest := list; !rest.Empty(); {
		var p cryptobyte.String
		if !rest.ReadUint8LengthPrefixed(&p) || p.Empty() {
			return nil, "application_layer_protocol_negotiation extension malformed"
		}
	}
	return list, ""
}

// splitALPN turns a validated protocol_name_list into strings that share one
// allocation.
func splitALPN(list cryptobyte.String) []string {
	if list == nil {
		return nil
	}
	count := 0
	for rest := list; !rest.Empty(); count++ {
		var p cryptobyte.String
		rest.ReadUint8LengthPrefixed(&p)
	}
	all := string(list)
	out := make([]string, 0, count)
	for i := 0; i < len(all); {
		n := int(all[i])
		out = append(out, all[i+1:i+1+n])
		i += 1 + n
	}
	return out
}

// parseSupportedVersions returns the highest non-GREASE version offered
// (RFC 8446 §4.2.1).
func parseSupportedVersions(data cryptobyte.String) (uint16, string) {
	var list cryptobyte.String
	if !data.ReadUint8LengthPrefixed(&list) || !data.Empty() || len(list) < 2 || len(list)%2 != 0 {
		return 0, "supported_versions extension malformed"
	}
	var best uint16
	for !list.Empty() {
		var v uint16
		list.ReadUint16(&v)
		if !isGREASE(v) && v > best {
			best = v
		}
	}
	if best == 0 {
		return 0, "supported_versions offers only GREASE"
	}
	return best, ""
}

// isGREASE reports the reserved values 0x0a0a, 0x1a1a, … 0xfafa (RFC 8701).
func isGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>8 == v&0xff
}

// ---- HTTP/1.x ----

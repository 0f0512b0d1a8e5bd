package bpf

import (
	"encoding/binary"
	"net/netip"
)

// The programs keep addresses and ports in network byte order inside fields
// the Go bindings see as native (little-endian: bpf2go builds bpfel only)
// integers. These convert between the two.

func nativeFromNet(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }

func netFromNative(dst []byte, v uint32) { binary.NativeEndian.PutUint32(dst, v) }

func htons(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(p uint16) uint16 { return htons(p) }

// addrWords lays an address out as the programs store it: 16 bytes in network
// order, IPv4 as v4-mapped IPv6.
func addrWords(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = nativeFromNet(b[4*i : 4*i+4])
	}
	return w
}

// wordsAddr is the inverse of addrWords; v4-mapped addresses come back as IPv4.
func wordsAddr(w [4]uint32) netip.Addr {
	var b [16]byte
	for i, v := range w {
		netFromNative(b[4*i:4*i+4], v)
	}
	return netip.AddrFrom16(b).Unmap()
}

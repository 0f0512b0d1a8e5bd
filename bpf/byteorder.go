package bpf

import "encoding/binary"

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

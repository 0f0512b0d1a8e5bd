// Package objstore drives the three object store emulators (fakes3,
// fakegcs, azurite) alike, for tests that run one scenario against each
// store: a fresh bucket per test, objects written with the cloud's own SDK,
// and this process's SDK environment pointed at the emulator or at a
// loopback port nothing serves.
package objstore

import (
	"testing"

	"github.com/backbay-labs/chio-agent/internal/testutil/azurite"
	"github.com/backbay-labs/chio-agent/internal/testutil/emulator"
	"github.com/backbay-labs/chio-agent/internal/testutil/fakegcs"
	"github.com/backbay-labs/chio-agent/internal/testutil/fakes3"
)

// Store is one emulator.
type Store struct {
	// Scheme is the policy source scheme: s3, gs or azblob.
	Scheme string
	// Bucket makes t's bucket (container), points this process's SDK at
	// the emulator for t (t.Setenv), and returns the store's base URL
	// (ending in "/") and a writer of its objects.
	Bucket func(t *testing.T) (base string, put func(key, data string))
	// Unreachable points this process's SDK at a loopback port nothing
	// serves, for t, and returns a base URL in that store.
	Unreachable func(t *testing.T) (base string)
}

// Stores are the three emulators.
var Stores = []Store{
	{
		Scheme: "s3",
		Bucket: func(t *testing.T) (string, func(string, string)) {
			s := fakes3.Shared(t)
			fakes3.Env(t, s.Endpoint())
			b := s.Bucket(t)
			return "s3://" + b + "/", func(k, d string) { s.Put(t, b, k, []byte(d)) }
		},
		Unreachable: func(t *testing.T) string {
			fakes3.Env(t, "http://"+emulator.ClosedAddr(t))
			return "s3://bucket/"
		},
	},
	{
		Scheme: "gs",
		Bucket: func(t *testing.T) (string, func(string, string)) {
			s := fakegcs.Shared(t)
			b := s.Bucket(t) // sets STORAGE_EMULATOR_HOST
			return "gs://" + b + "/", func(k, d string) { s.Put(t, b, k, []byte(d)) }
		},
		Unreachable: func(t *testing.T) string {
			fakegcs.Env(t, emulator.ClosedAddr(t))
			return "gs://bucket/"
		},
	},
	{
		Scheme: "azblob",
		Bucket: func(t *testing.T) (string, func(string, string)) {
			s := azurite.Shared(t)
			azurite.Env(t, s.Addr())
			c := s.Container(t)
			return "azblob://" + azurite.Account + "/" + c + "/", func(k, d string) { s.Put(t, c, k, []byte(d)) }
		},
		Unreachable: func(t *testing.T) string {
			azurite.Env(t, emulator.ClosedAddr(t))
			return "azblob://" + azurite.Account + "/container/"
		},
	},
}

// Each runs f as a subtest per store.
func Each(t *testing.T, f func(t *testing.T, s Store)) {
	for _, s := range Stores {
		t.Run(s.Scheme, func(t *testing.T) { f(t, s) })
	}
}

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
	// Bucket makes t's bucket (container) on the shared emulator, points
	// this process's SDK at it for t (t.Setenv), and returns the store's
	// base URL (ending in "/") and a writer of its objects.
	Bucket func(t *testing.T) (base string, put func(key, data string))
	// Private starts an emulator of t's own keeping its data on disk, so
	// that it survives the returned process's Stop and Restart (on the
	// same port), makes t's bucket there, points this process's SDK at it
	// for t, and returns the bucket's base URL (ending in "/").
	Private func(t *testing.T) (base string, p *emulator.Proc)
	// Unreachable points this process's SDK at a loopback port nothing
	// serves, for t, and returns a base URL in that store.
	Unreachable func(t *testing.T) (base string)
}

// Stores are the three emulators.
var Stores = []Store{
	{
		Scheme: "s3",
		Bucket: func(t *testing.T) (string, func(string, string)) { return s3Bucket(t, fakes3.Shared(t)) },
		Private: func(t *testing.T) (string, *emulator.Proc) {
			s := fakes3.Start(t)
			base, _ := s3Bucket(t, s)
			return base, s.Proc
		},
		Unreachable: func(t *testing.T) string {
			fakes3.Env(t, "http://"+emulator.ClosedAddr(t))
			return "s3://bucket/"
		},
	},
	{
		Scheme: "gs",
		Bucket: func(t *testing.T) (string, func(string, string)) { return gsBucket(t, fakegcs.Shared(t)) },
		Private: func(t *testing.T) (string, *emulator.Proc) {
			s := fakegcs.Start(t)
			base, _ := gsBucket(t, s)
			return base, s.Proc
		},
		Unreachable: func(t *testing.T) string {
			fakegcs.Env(t, emulator.ClosedAddr(t))
			return "gs://bucket/"
		},
	},
	{
		Scheme: "azblob",
		Bucket: func(t *testing.T) (string, func(string, string)) { return azContainer(t, azurite.Shared(t)) },
		Private: func(t *testing.T) (string, *emulator.Proc) {
			s := azurite.Start(t)
			base, _ := azContainer(t, s)
			return base, s.Proc
		},
		Unreachable: func(t *testing.T) string {
			azurite.Env(t, emulator.ClosedAddr(t))
			return "azblob://" + azurite.Account + "/container/"
		},
	},
}

func s3Bucket(t *testing.T, s *fakes3.Server) (string, func(string, string)) {
	fakes3.Env(t, s.Endpoint())
	b := s.Bucket(t)
	return "s3://" + b + "/", func(k, d string) { s.Put(t, b, k, []byte(d)) }
}

func gsBucket(t *testing.T, s *fakegcs.Server) (string, func(string, string)) {
	b := s.Bucket(t) // sets STORAGE_EMULATOR_HOST
	return "gs://" + b + "/", func(k, d string) { s.Put(t, b, k, []byte(d)) }
}

func azContainer(t *testing.T, s *azurite.Server) (string, func(string, string)) {
	azurite.Env(t, s.Addr())
	c := s.Container(t)
	return "azblob://" + azurite.Account + "/" + c + "/", func(k, d string) { s.Put(t, c, k, []byte(d)) }
}

// Each runs f as a subtest per store.
func Each(t *testing.T, f func(t *testing.T, s Store)) {
	for _, s := range Stores {
		t.Run(s.Scheme, func(t *testing.T) { f(t, s) })
	}
}

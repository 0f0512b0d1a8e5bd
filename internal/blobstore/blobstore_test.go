package blobstore_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/blobstore"
	"github.com/backbay-labs/chio-agent/internal/testutil/objstore"
)

// open makes the client of the store at base (objstore's base URL).
func open(t *testing.T, base string) blobstore.Store {
	t.Helper()
	u, err := blobstore.ParseURL(base)
	if err != nil {
		t.Fatal(err)
	}
	st, err := blobstore.Open(context.Background(), u.Scheme, u.Bucket, u.Container)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestCreateListDirs, against each emulator through its SDK: Create writes
// once and refuses the second time with ErrExists, leaving the object;
// List lists a prefix in byte order past a name; Dirs the names below a
// prefix.
func TestCreateListDirs(t *testing.T) {
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		base, put := b.Bucket(t)
		st := open(t, base)
		if err := st.Create(ctx, "p/a/1", []byte("first")); err != nil {
			t.Fatal(err)
		}
		if err := st.Create(ctx, "p/a/1", []byte("second")); !errors.Is(err, blobstore.ErrExists) {
			t.Fatalf("second Create: %v; want ErrExists", err)
		}
		if data, _, err := st.Get(ctx, "p/a/1", 100); err != nil || string(data) != "first" {
			t.Fatalf("after a refused Create: %q, %v", data, err)
		}
		if _, _, err := st.Get(ctx, "p/a/1", 3); !errors.Is(err, blobstore.ErrTooLarge) {
			t.Fatalf("Get beyond max: %v", err)
		}
		if _, err := st.Version(ctx, "p/missing"); !errors.Is(err, blobstore.ErrNotFound) {
			t.Fatalf("Version of a missing object: %v", err)
		}
		for _, k := range []string{"p/a/3", "p/a/2", "p/b/1", "p/c", "q/a/1"} {
			put(k, k)
		}
		list := func(prefix, after string) []string {
			var got []string
			if err := st.List(ctx, prefix, after, func(k string) error { got = append(got, k); return nil }); err != nil {
				t.Fatal(err)
			}
			return got
		}
		if got := list("p/a/", ""); !slices.Equal(got, []string{"p/a/1", "p/a/2", "p/a/3"}) {
			t.Fatalf("List(p/a/) = %v", got)
		}
		if got := list("p/a/", "p/a/1"); !slices.Equal(got, []string{"p/a/2", "p/a/3"}) {
			t.Fatalf("List(p/a/ after p/a/1) = %v", got)
		}
		stop := errors.New("stop")
		if err := st.List(ctx, "p/", "", func(string) error { return stop }); err != stop {
			t.Fatalf("List did not stop at fn's error: %v", err)
		}
		if got, err := st.Dirs(ctx, "p/"); err != nil || !slices.Equal(got, []string{"a", "b"}) {
			t.Fatalf("Dirs(p/) = %v, %v", got, err)
		}
		if got, err := st.Dirs(ctx, ""); err != nil || !slices.Equal(got, []string{"p", "q"}) {
			t.Fatalf("Dirs() = %v, %v", got, err)
		}
	})
}

// TestUnreachable: calls to a store nothing serves fail, naming no
// ErrNotFound or ErrExists (an outage is not an answer). The Cloud Storage
// SDK retries until its context ends: the caller bounds it (the shipper
// its put, policysource its read).
func TestUnreachable(t *testing.T) {
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		st := open(t, b.Unreachable(t))
		err := st.Create(ctx, "k", []byte("x"))
		if err == nil || errors.Is(err, blobstore.ErrExists) || errors.Is(err, blobstore.ErrNotFound) {
			t.Fatalf("Create on an unreachable store: %v", err)
		}
		if _, err := st.Dirs(ctx, ""); err == nil {
			t.Fatal("Dirs on an unreachable store succeeded")
		}
	})
}

// TestParseURL: what each part of a store URL may be.
func TestParseURL(t *testing.T) {
	u, err := blobstore.ParseURL("azblob://acct/cont/a/b%3Fc")
	if err != nil || u.Bucket != "acct" || u.Container != "cont" || u.Path != "a/b?c" || u.Base() != "azblob://acct/cont/" {
		t.Fatalf("ParseURL = %+v, %v", u, err)
	}
	for raw, want := range map[string]string{
		"http://b/k":          "not an s3://",
		"s3:///k":             "no bucket",
		"gs://u:p@b/k":        "credentials",
		"s3://b:1/k":          "port",
		"gs://b/k?x":          "query",
		"azblob://acct":       "no container",
		"azblob://acct//blob": "no container",
	} {
		if _, err := blobstore.ParseURL(raw); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), ":p@") {
			t.Errorf("ParseURL(%q) = %v; want an error saying %q", raw, err, want)
		}
	}
}

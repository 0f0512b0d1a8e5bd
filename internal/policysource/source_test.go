package policysource

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/emulator"
	"github.com/backbay-labs/chio-agent/internal/testutil/fakes3"
	"github.com/backbay-labs/chio-agent/internal/testutil/objstore"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

func allowing(host string) string {
	return "hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [" + host + "]\n    default: block\n"
}

func decide(p *hushspec.Policy, host string) string {
	return p.Evaluate(hushspec.Action{Type: "egress", Target: host}).Decision
}

// newSource is New(url) for t, closed when t ends.
func newSource(t *testing.T, url string) *Source {
	t.Helper()
	src, err := New(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// mustLoad loads src or fails t.
func mustLoad(t *testing.T, ctx context.Context, src *Source) *hushspec.Policy {
	t.Helper()
	p, err := src.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestStoreLoadChangeBreak: a policy loads from the store at start, a change
// in the store is seen and the new policy decides, a broken replacement is
// refused (the caller keeps the old) and not retried until it changes again.
func TestStoreLoadChangeBreak(t *testing.T) {
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		ctx := ctxT(t)
		base, put := b.Bucket(t)
		put("policy.yaml", allowing("a.example.com"))
		src := newSource(t, base+"policy.yaml")
		p := mustLoad(t, ctx, src)
		if decide(p, "a.example.com") != hushspec.DecisionAllow || decide(p, "b.example.com") != hushspec.DecisionDeny {
			t.Fatal("the loaded policy does not decide as written")
		}
		if c, err := src.Changed(ctx); err != nil || c {
			t.Fatalf("Changed = %v, %v before any change", c, err)
		}

		put("policy.yaml", allowing("b.example.com"))
		if c, err := src.Changed(ctx); err != nil || !c {
			t.Fatalf("Changed = %v, %v after the object changed", c, err)
		}
		p = mustLoad(t, ctx, src)
		if decide(p, "b.example.com") != hushspec.DecisionAllow || decide(p, "a.example.com") != hushspec.DecisionDeny {
			t.Fatal("the reloaded policy does not decide as the new object says")
		}

		put("policy.yaml", "hushspec: \"0.1.0\"\nrules:\n  egres: {}\n")
		if c, err := src.Changed(ctx); err != nil || !c {
			t.Fatalf("Changed = %v, %v after the broken write", c, err)
		}
		_, err := src.Load(ctx)
		if err == nil || !errors.Is(err, hushspec.ErrInvalidPolicy) || !strings.Contains(err.Error(), base+"policy.yaml") {
			t.Fatalf("broken policy: err = %v; want an invalid policy error naming the object", err)
		}
		if c, err := src.Changed(ctx); err != nil || c {
			t.Fatalf("Changed = %v, %v: the refused content must not be retried until it changes", c, err)
		}
	})
}

// TestStoreUnreachableAtStart: no store, no policy; the error names the
// object and the cause.
func TestStoreUnreachableAtStart(t *testing.T) {
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		src := newSource(t, b.Unreachable(t)+"policy.yaml")
		src.Timeout = 5 * time.Second
		_, err := src.Load(ctxT(t))
		if err == nil {
			t.Fatal("loaded a policy from a store nothing serves")
		}
		if !strings.Contains(err.Error(), src.Location().String()) || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("err = %v; want it to name %s and the cause (connection refused)", err, src.Location())
		}
	})
}

// TestStoreMissingObject: a bucket without the object fails closed, naming
// it.
func TestStoreMissingObject(t *testing.T) {
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		base, _ := b.Bucket(t)
		_, err := Load(ctxT(t), base+"absent.yaml")
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), base+"absent.yaml") {
			t.Fatalf("err = %v; want ErrNotFound naming the object", err)
		}
	})
}

// TestStorePin: a #sha256 pin admits exactly the pinned content.
func TestStorePin(t *testing.T) {
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		ctx := ctxT(t)
		base, put := b.Bucket(t)
		doc := allowing("a.example.com")
		put("policy.yaml", doc)
		sum := sha256.Sum256([]byte(doc))
		pinned := base + "policy.yaml#sha256:" + hex.EncodeToString(sum[:])
		if _, err := Load(ctx, pinned); err != nil {
			t.Fatalf("pinned content refused: %v", err)
		}
		// The attacker who can write the bucket swaps the policy.
		put("policy.yaml", allowing("evil.example.com"))
		_, err := Load(ctx, pinned)
		if !errors.Is(err, ErrPinMismatch) || !strings.Contains(err.Error(), base+"policy.yaml") {
			t.Fatalf("err = %v; want ErrPinMismatch naming the object", err)
		}
		// A pinned policy cannot pull an unpinned base in.
		ext := "extends: base.yaml\n" + allowing("a.example.com")
		put("ext.yaml", ext)
		put("base.yaml", allowing("b.example.com"))
		sum = sha256.Sum256([]byte(ext))
		if _, err := Load(ctx, base+"ext.yaml#sha256:"+hex.EncodeToString(sum[:])); err == nil || !strings.Contains(err.Error(), "pinned policy may not extend") {
			t.Fatalf("pinned policy with extends: err = %v", err)
		}
	})
}

// TestStoreExtends: extends resolves beside the object in the same store,
// a change of the base is seen, and references that would leave the store
// (absolute, above its root, another scheme) are refused.
func TestStoreExtends(t *testing.T) {
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		ctx := ctxT(t)
		base, put := b.Bucket(t)
		put("team/base.yaml", "hushspec: \"0.1.0\"\nrules:\n  egress:\n    allow: [base.example.com]\n    default: block\n  tool_access:\n    block: [shell]\n")
		put("team/policy.yaml", "hushspec: \"0.1.0\"\nextends: base\nrules:\n  egress:\n    allow: [child.example.com]\n    default: block\n")
		src := newSource(t, base+"team/policy.yaml")
		p := mustLoad(t, ctx, src)
		if decide(p, "child.example.com") != hushspec.DecisionAllow {
			t.Fatal("the child's rule does not decide")
		}
		if p.Evaluate(hushspec.Action{Type: "tool_call", Target: "shell"}).Decision != hushspec.DecisionDeny {
			t.Fatal("the base's rule was not merged in")
		}
		// A change of the base alone is a change of the policy.
		put("team/base.yaml", "hushspec: \"0.1.0\"\nrules:\n  tool_access:\n    block: [other]\n")
		if c, err := src.Changed(ctx); err != nil || !c {
			t.Fatalf("Changed = %v, %v after the base changed", c, err)
		}
		p = mustLoad(t, ctx, src)
		if p.Evaluate(hushspec.Action{Type: "tool_call", Target: "shell"}).Decision != hushspec.DecisionAllow {
			t.Fatal("the changed base does not decide")
		}

		for name, ref := range map[string]string{
			"absolute": "/etc/chio/base.yaml", "above the root": "../../outside.yaml",
			"another store": "s3://other/base.yaml", "a file URL": "file:///etc/passwd",
		} {
			put("escape.yaml", "hushspec: \"0.1.0\"\nextends: "+ref+"\n")
			_, err := Load(ctx, base+"escape.yaml")
			if !errors.Is(err, hushspec.ErrExtendsUnresolved) || !strings.Contains(err.Error(), base+"escape.yaml") {
				t.Errorf("extends %s (%q): err = %v; want ErrExtendsUnresolved naming the object", name, ref, err)
			}
		}
		// A missing base names both objects, is not retried while it is
		// missing, and its appearance is a change.
		put("orphan.yaml", "hushspec: \"0.1.0\"\nextends: nothing.yaml\n")
		orphan := newSource(t, base+"orphan.yaml")
		if _, err := orphan.Load(ctx); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), base+"nothing.yaml") {
			t.Errorf("missing base: err = %v", err)
		}
		if c, err := orphan.Changed(ctx); err != nil || c {
			t.Errorf("Changed = %v, %v while the base is still missing", c, err)
		}
		put("nothing.yaml", allowing("late.example.com"))
		if c, err := orphan.Changed(ctx); err != nil || !c {
			t.Errorf("Changed = %v, %v once the base exists", c, err)
		}
		if p, err := orphan.Load(ctx); err != nil || decide(p, "late.example.com") != hushspec.DecisionAllow {
			t.Errorf("once the base exists: %v", err)
		}
		// A cycle is refused, with the store's names, not a local path's.
		put("x.yaml", "hushspec: \"0.1.0\"\nextends: y.yaml\n")
		put("y.yaml", "hushspec: \"0.1.0\"\nextends: x.yaml\n")
		if _, err := Load(ctx, base+"x.yaml"); !errors.Is(err, hushspec.ErrExtendsCycle) || strings.Contains(err.Error(), "chio-policy-") {
			t.Errorf("cycle: err = %v", err)
		}
	})
}

// TestStoreWatch: Watch calls back once the object changes.
func TestStoreWatch(t *testing.T) {
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		ctx := ctxT(t)
		base, put := b.Bucket(t)
		put("policy.yaml", allowing("a.example.com"))
		src := newSource(t, base+"policy.yaml")
		mustLoad(t, ctx, src)
		changed := make(chan struct{}, 1)
		var calls atomic.Int32
		wctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			src.Watch(wctx, 20*time.Millisecond, func() {
				calls.Add(1)
				select {
				case changed <- struct{}{}:
				default:
				}
			}, nil)
		}()
		put("policy.yaml", allowing("b.example.com"))
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatal("Watch never reported the change")
		}
		stop()
		<-done
	})
}

func TestParse(t *testing.T) {
	pin := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in, bucket, container, key string
		pinned                     bool
	}{
		{in: "s3://b/policy.yaml", bucket: "b", key: "policy.yaml"},
		{in: "gs://p-chio-config/dir/policy.yaml#sha256:" + pin, bucket: "p-chio-config", key: "dir/policy.yaml", pinned: true},
		{in: "azblob://acct/cont/a/b.yaml", bucket: "acct", container: "cont", key: "a/b.yaml"},
		{in: "s3://b/with%3Fquery.yaml", bucket: "b", key: "with?query.yaml"},
	} {
		l, err := Parse(tc.in)
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if l.Bucket != tc.bucket || l.Container != tc.container || l.Key != tc.key || (l.Pin != nil) != tc.pinned {
			t.Errorf("%s: got %+v", tc.in, l)
		}
	}
	for _, bad := range []string{
		"s3://", "s3:///key", "s3://b", "s3://b/", "s3://b/dir/", "s3://b/../x", "s3://b/a/./x", "s3://b/a//x",
		"s3://b:9000/k", "s3://user:pw@b/k", "s3://b/k?x=1", "s3://b/k#md5:00", "s3://b/k#sha256:abc",
		"azblob://acct/cont", "azblob://acct//blob", "http://b/k",
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%s: parsed", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("s3://b/k.yaml#sha256:" + strings.Repeat("00", 32))
	f.Add("azblob://a/c/b")
	f.Fuzz(func(t *testing.T, s string) {
		l, err := Parse(s)
		if err != nil {
			return
		}
		// A parsed key never leaves the store's root.
		if !strings.HasPrefix(l.URL(l.Key), l.Base()) || l.Key == "" || strings.HasPrefix(l.Key, "/") || strings.Contains("/"+l.Key+"/", "/../") {
			t.Fatalf("%q parsed to %+v", s, l)
		}
	})
}

// TestS3NoRegion: without a region the SDK could only guess where the
// bucket is; the load stops, saying what to set, before any request.
func TestS3NoRegion(t *testing.T) {
	fakes3.Env(t, "http://"+emulator.ClosedAddr(t))
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	_, err := Load(ctxT(t), "s3://bucket/policy.yaml")
	if err == nil || !strings.Contains(err.Error(), "AWS_REGION") || !strings.Contains(err.Error(), "s3://bucket/policy.yaml") {
		t.Fatalf("err = %v; want it to name the object and AWS_REGION", err)
	}
}

// TestStoreOversizedObject: an object larger than a policy may be is
// refused without reading it all (a bucket writer cannot exhaust memory).
func TestStoreOversizedObject(t *testing.T) {
	objstore.Each(t, func(t *testing.T, b objstore.Store) {
		base, put := b.Bucket(t)
		put("huge.yaml", "hushspec: \"0.1.0\"\n#"+strings.Repeat("x", hushspec.MaxDocumentBytes))
		if _, err := Load(ctxT(t), base+"huge.yaml"); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), base+"huge.yaml") {
			t.Fatalf("err = %v; want ErrTooLarge naming the object", err)
		}
	})
}

// TestStoreStalled: a store that accepts and never answers cannot hold the
// start: the load ends at its timeout, naming the object.
func TestStoreStalled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()
	fakes3.Env(t, "http://"+ln.Addr().String())
	src := newSource(t, "s3://bucket/policy.yaml")
	src.Timeout = time.Second
	_, err = src.Load(ctxT(t))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "s3://bucket/policy.yaml") {
		t.Fatalf("err = %v; want the deadline, naming the object", err)
	}
}

package sidecar

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/backbay-labs/chio-agent/internal/testutil/objstore"
	"github.com/backbay-labs/chio-agent/kernel/config"
)

// eventually polls cond (every 20ms, at most 30s): the watch acts on its
// own interval, and the test waits for its effect, not for a time.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStorePolicyWatched: a sidecar whose policy is an object in a store
// decides by it from the start, follows a change in the store without a
// reload request, refuses a broken replacement (logged, the policy in force
// staying) and follows the next good one.
func TestStorePolicyWatched(t *testing.T) {
	objstore.Each(t, func(t *testing.T, st objstore.Store) {
		base, put := st.Bucket(t)
		put("pets/policy.yaml", testPolicy)
		logger, hook := logtest.NewNullLogger()
		f := startFixtureWith(t, func(s *config.SidecarSettings) {
			s.PolicySource = base + "pets/policy.yaml"
			s.PolicyWatchInterval = 30 * time.Millisecond
		}, func(o *Options) { o.Logger = logger })
		status := func(method, path string) int {
			resp, _ := f.do(method, path, nil, nil)
			return resp.StatusCode
		}
		if status("DELETE", "/pets/1") != http.StatusForbidden || status("GET", "/pets") != http.StatusOK {
			t.Fatal("the store's policy does not decide at start")
		}

		put("pets/policy.yaml", strings.Replace(testPolicy, "block: [deletePet]", "block: [listPets]", 1))
		eventually(t, "the changed policy to decide", func() bool { return status("GET", "/pets") == http.StatusForbidden })
		if status("DELETE", "/pets/1") != http.StatusForbidden {
			t.Fatal("deletePet allowed: the new policy still blocks it by default")
		}

		put("pets/policy.yaml", "hushspec: \"0.1.0\"\nrules: {tool_access: {alow: []}}\n")
		eventually(t, "the broken policy's refusal in the log", func() bool {
			for _, e := range hook.AllEntries() {
				if e.Level == logrus.ErrorLevel && strings.Contains(e.Message, "refused") {
					err, _ := e.Data[logrus.ErrorKey].(error)
					return err != nil && strings.Contains(err.Error(), base+"pets/policy.yaml") && strings.Contains(err.Error(), "alow")
				}
			}
			return false
		})
		if status("GET", "/pets") != http.StatusForbidden || status("GET", "/pets/1") != http.StatusOK {
			t.Fatal("the policy in force changed when a broken one was refused")
		}

		put("pets/policy.yaml", testPolicy)
		eventually(t, "the next good policy to decide", func() bool { return status("GET", "/pets") == http.StatusOK })
	})
}

// TestStorePolicyUnreachableAtStart: no store, no sidecar; the error names
// the object and the cause.
func TestStorePolicyUnreachableAtStart(t *testing.T) {
	objstore.Each(t, func(t *testing.T, st objstore.Store) {
		src := st.Unreachable(t) + "policy.yaml"
		dir := t.TempDir()
		set := baseSettings(t, dir, "http://127.0.0.1:1", newKey(t))
		set.PolicySource = src
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := Start(ctx, Options{Settings: set})
		if err == nil {
			s.Close(context.Background())
			t.Fatal("the sidecar started without its policy")
		}
		if !strings.Contains(err.Error(), src) || !(strings.Contains(err.Error(), "connection refused") || errors.Is(err, context.DeadlineExceeded)) {
			t.Fatalf("err = %v; want it to name %s and the cause", err, src)
		}
	})
}

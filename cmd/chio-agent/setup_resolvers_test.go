package main

import (
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sirupsen/logrus"
)

// TestRunKubeResolversFromResolvConf: with no agent.resolvers, the
// workloads may reach the nameservers of resolv.conf (the cluster DNS in the
// DaemonSet), and named resolvers are kept as they are.
func TestRunKubeResolversFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(rc, []byte("search chio-system.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.Out = io.Discard
	s := &nodeSetup{logger: log}
	s.defaultResolvers(rc)
	want := []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:53"), netip.MustParseAddrPort("[fd00::a]:53")}
	if !slices.Equal(s.agentOpts.Resolvers, want) {
		t.Errorf("resolvers %v, want %v", s.agentOpts.Resolvers, want)
	}
	named := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53")}
	s.agentOpts.Resolvers = slices.Clone(named)
	s.defaultResolvers(rc)
	if !slices.Equal(s.agentOpts.Resolvers, named) {
		t.Errorf("named resolvers replaced: %v", s.agentOpts.Resolvers)
	}
	s.agentOpts.Resolvers = nil
	s.defaultResolvers(filepath.Join(dir, "absent"))
	if len(s.agentOpts.Resolvers) != 0 {
		t.Errorf("resolvers from an absent resolv.conf: %v", s.agentOpts.Resolvers)
	}
}

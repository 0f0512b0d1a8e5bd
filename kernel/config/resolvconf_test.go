package config

import (
	"strings"
	"testing"
)

func TestParseResolvConf(t *testing.T) {
	got, err := parseResolvConf(strings.NewReader("# comment\nsearch example\nnameserver 127.0.0.53\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.53:53", "[::1]:53", "[fe80::1]:53"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("resolver %d = %s, want %s", i, got[i], want[i])
		}
	}
}

package ship

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backbay-labs/chio-agent/internal/testutil/natscluster"
	"github.com/backbay-labs/chio-agent/receipts"
)

// crashChildEnv carries the child's settings: log path, URLs, token,
// stream, subject prefix and how many receipts to append.
const crashChildEnv = "CHIO_SHIP_CRASH_CHILD"

// TestShipCrashChild is the shipping process TestShipSIGKILLResume kills:
// it owns the log (as the agent does), appends, and ships. It is not a test
// on its own.
func TestShipCrashChild(t *testing.T) {
	v := os.Getenv(crashChildEnv)
	if v == "" {
		return // only as TestShipSIGKILLResume's child (a skip would fail CI)
	}
	f := strings.Split(v, "|")
	path, urls, token, stream, prefix := f[0], f[1], f[2], f[3], f[4]
	n, _ := strconv.Atoi(f[5])
	key := testKey("crash")
	l := openLog(t, path, key, 10)
	defer l.Close()
	o := Options{Servers: strings.Split(urls, ","), Stream: stream, SubjectPrefix: prefix,
		Credentials: Credentials{TokenEnv: "T"}, Lookup: func(string) (string, bool) { return token, true }}
	s := startShipper(t, l, o)
	appendN(t, l, key, int(l.LastSeq()), n)
	sealAll(t, l)
	waitShipped(t, l, s, 2*time.Minute)
	os.Stdout.WriteString("CAUGHT UP\n")
}

// TestShipSIGKILLResume SIGKILLs the process that appends and ships while
// it ships, then starts it again: it resumes after what the stream holds,
// and the stream ends with every sealed batch of the log exactly once.
func TestShipSIGKILLResume(t *testing.T) {
	c := natscluster.Shared(t)
	path := tempLog(t)
	o := clusterOptions(c)
	child := func(n int) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestShipCrashChild$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+strings.Join([]string{path, c.URLs(), c.Token, o.Stream, o.SubjectPrefix, strconv.Itoa(n)}, "|"))
		return cmd
	}
	cmd := child(20000)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill it once the stream holds some of its batches (it is shipping).
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("the child shipped nothing in 2 minutes")
		}
		if info, err := c.StreamInfo(o.Stream); err == nil && info.State.Msgs >= 20 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	killedAt := streamInfo(t, c, o.Stream).State.Msgs

	out, err := child(500).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CAUGHT UP") {
		t.Fatalf("restarted shipper: %v\n%s", err, out)
	}
	l, err := receipts.Open(path, receipts.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	n := checkStream(t, c, o.Stream, l)
	if uint64(n) <= killedAt*10 {
		t.Fatalf("after the restart the stream seals %d receipts, no more than the %d batches held at the kill", n, killedAt)
	}
	t.Logf("killed with %d batches in the stream; %d receipts shipped in the end", killedAt, n)
}

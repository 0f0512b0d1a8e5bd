package receipts

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash tests re-execute the test binary as a child that appends under
// load and reports every Append that returned success on stdout; the parent
// kills it with SIGKILL at a random moment, reopens the log and checks it.
const (
	envChild    = "RECEIPTS_TEST_CHILD" // "append" or "fill"
	envChildDB  = "RECEIPTS_TEST_DB"
	envChildArg = "RECEIPTS_TEST_ARG"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envChild) {
	case "append":
		os.Exit(childAppend())
	case "fill":
		os.Exit(childFill())
	}
	code := m.Run()
	if dir, err := damageDir(); err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

func childKey() []byte { return testKey("crash") }

// childAppend appends from 16 writers until killed, printing "ok SEQ ID"
// after each successful sync Append, or "acc N" (accepted so far) in async
// mode.
func childAppend() int {
	mode, _ := ParseMode(os.Getenv(envChildArg))
	l, err := Open(os.Getenv(envChildDB), Options{Key: childKey(), Mode: mode, CheckpointEvery: 37, QueueSize: 256})
	if err != nil {
		fmt.Println("open-error", err)
		return 1
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	report := func(s string) {
		mu.Lock()
		out.WriteString(s)
		out.Flush()
		mu.Unlock()
	}
	report("ready\n")
	var accepted int64
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				b, err := SyntheticReceipt(l.opts.Key, w*1_000_000+i+rand.IntN(1<<30), time.Now())
				if err != nil {
					report("error " + err.Error() + "\n")
					return
				}
				seq, err := l.Append(context.Background(), b)
				if err != nil {
					report("error " + err.Error() + "\n")
					return
				}
				e, _, _ := parseEntry(b)
				if mode == ModeSync {
					report(fmt.Sprintf("ok %d %s\n", seq, e.ID))
				} else {
					mu.Lock()
					accepted++
					out.WriteString(fmt.Sprintf("acc %d\n", accepted))
					out.Flush()
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return 2
}

type childRun struct {
	cmd   *exec.Cmd
	lines chan string
}

func startChild(t *testing.T, kind, db, arg string) *childRun {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+kind, envChildDB+"="+db, envChildArg+"="+arg)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childRun{cmd: cmd, lines: make(chan string, 1<<16)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	select {
	case l, ok := <-c.lines:
		if !ok || l != "ready" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child did not start: %q", l)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("child not ready after 30s")
	}
	return c
}

// collect drains the child's reports after it has died.
func (c *childRun) collect() []string {
	c.cmd.Wait()
	var out []string
	for l := range c.lines {
		out = append(out, l)
	}
	return out
}

func TestCrashSIGKILL(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("RECEIPTS_CRASH_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (RECEIPTS_CRASH_SEED to repeat)", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	kills := 20
	if testing.Short() {
		kills = 4
	}
	db := filepath.Join(t.TempDir(), "crash.db")
	promised := map[uint64]string{}
	var lastSeq uint64
	for k := 0; k < kills; k++ {
		mode := "sync"
		if k%4 == 3 {
			mode = "async"
		}
		c := startChild(t, "append", db, mode)
		time.Sleep(time.Duration(5+rng.IntN(150)) * time.Millisecond)
		if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		lines := c.collect()
		acc := 0
		for _, l := range lines {
			f := strings.Fields(l)
			switch f[0] {
			case "ok":
				seq, _ := strconv.ParseUint(f[1], 10, 64)
				if prev, dup := promised[seq]; dup && prev != f[2] {
					t.Fatalf("kill %d: seq %d promised twice (%s, %s)", k, seq, prev, f[2])
				}
				promised[seq] = f[2]
			case "acc":
				acc, _ = strconv.Atoi(f[1])
			default:
				t.Fatalf("kill %d: child said %q", k, l)
			}
		}
		l, err := Open(db, Options{Key: childKey(), CheckpointEvery: 37})
		if err != nil {
			t.Fatalf("kill %d: reopen: %v", k, err)
		}
		rec := l.Recovery()
		if mode == "async" && uint64(acc) > rec.LastSeq-lastSeq+rec.Lost {
			t.Fatalf("kill %d: %d async receipts accepted, %d durable and %d reported lost", k, acc, rec.LastSeq-lastSeq, rec.Lost)
		}
		for seq, id := range promised {
			e, err := l.Get(seq)
			if err != nil {
				t.Fatalf("kill %d: receipt seq %d returned success but is gone: %v", k, seq, err)
			}
			if e.ID != id {
				t.Fatalf("kill %d: seq %d holds %s, child was told %s", k, seq, e.ID, id)
			}
		}
		if _, err := l.Verify(context.Background(), VerifyOptions{}); err != nil {
			t.Fatalf("kill %d: verify after crash (before sealing): %v", k, err)
		}
		t.Logf("kill %d (%s): %d durable, %d unsealed at open, %d lost", k, mode, rec.LastSeq, rec.Unsealed, rec.Lost)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		rep := verifyFile(t, db)
		if rep.Unsealed != 0 {
			t.Fatalf("kill %d: %d receipts left unsealed after a clean close", k, rep.Unsealed)
		}
		lastSeq = rep.LastSeq
	}
	if len(promised) == 0 {
		t.Fatal("no Append ever returned success: the test proved nothing")
	}
}

// childFill limits its own file size (RLIMIT_FSIZE, no privilege needed) so
// that the disk is "full" a little past the current size, then appends
// until Append fails, reporting each success.
func childFill() int {
	signal.Ignore(syscall.SIGXFSZ) // get EFBIG from write instead of dying
	db := os.Getenv(envChildDB)
	l, err := Open(db, Options{Key: childKey(), CheckpointEvery: 10})
	if err != nil {
		fmt.Println("open-error", err)
		return 1
	}
	st, _ := os.Stat(db)
	lim := uint64(st.Size()) + 256<<10
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: lim, Max: lim}); err != nil {
		fmt.Println("rlimit-error", err)
		return 1
	}
	fmt.Println("ready")
	for i := 0; i < 200000; i++ {
		b, _ := SyntheticReceipt(l.opts.Key, i, time.Now())
		seq, err := l.Append(context.Background(), b)
		if err != nil {
			fmt.Println("fail", strings.ReplaceAll(err.Error(), "\n", " "))
			// A later Append must fail too or succeed honestly; never drop.
			l.Close()
			return 0
		}
		e, _, _ := parseEntry(b)
		fmt.Println("ok", seq, e.ID)
	}
	fmt.Println("never-full")
	return 0
}

func TestDiskFullFailsAppend(t *testing.T) {
	db := filepath.Join(t.TempDir(), "full.db")
	l, err := Open(db, Options{Key: childKey()})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	c := startChild(t, "fill", db, "")
	lines := c.collect()
	okSeqs := map[uint64]string{}
	failed := ""
	for _, l := range lines {
		f := strings.Fields(l)
		switch f[0] {
		case "ok":
			seq, _ := strconv.ParseUint(f[1], 10, 64)
			okSeqs[seq] = f[2]
		case "fail":
			failed = l
		default:
			t.Fatalf("child said %q", l)
		}
	}
	if failed == "" {
		t.Fatal("Append never failed on a full file system")
	}
	if !strings.Contains(failed, "file too large") && !strings.Contains(failed, "no space") {
		t.Logf("failure: %s", failed)
	}
	t.Logf("%d appends succeeded, then: %s", len(okSeqs), failed)
	ro, err := Open(db, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.Verify(context.Background(), VerifyOptions{}); err != nil {
		t.Fatalf("verify after disk full: %v", err)
	}
	for seq, id := range okSeqs {
		e, err := ro.Get(seq)
		if err != nil || e.ID != id {
			t.Fatalf("seq %d returned success but reads back %v %v", seq, e.ID, err)
		}
	}
	_ = hex.EncodeToString
	_ = errors.New
}

package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
)

// mode is one way of reaching the upstream.
type mode struct {
	name     string // as printed
	receipts string // "" (no agent), "sync" or "async": run the client under `chio-agent exec`
	via      string // the address the client dials
	bin      string // agent modes: the chio-agent binary, if not -agent's
	log      string // agent modes: the receipt log's name, if not receipts
	pid      int    // proxy modes without an agent: the proxy's process, for its CPU time
}

// progStats are the kernel's run statistics of one BPF program.
type progStats struct {
	runtime time.Duration
	count   uint64
}

func (p progStats) add(q progStats) progStats {
	return progStats{p.runtime + q.runtime, p.count + q.count}
}

// runResult is what one client process reported.
type runResult struct {
	lats  []time.Duration
	bulks []bulkResult
	progs map[string]progStats // agent modes: the programs' statistics at "done"
	// cpu is the proxy's CPU time (user and system, all its threads) from
	// the client's "start" (after its warm-up) to its "done", and conns the
	// connections measured in between; zero for direct.
	cpu   time.Duration
	conns int
}

type bulkResult struct {
	bytes int64
	d     time.Duration
}

// runOnce starts one client process in mode m and collects its lines. In an
// agent mode the client is the command of a real `chio-agent exec`, which
// makes a fresh cgroup, attaches the programs to it, protects it, and starts
// the client inside (clone3 into the cgroup), so every connect() the client
// makes goes through the hook and the proxy.
func (d *driver) runOnce(ctx context.Context, m mode, clientArgs []string) (runResult, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.runTimeout)
	defer cancel()
	args := append([]string{"client", "-addr", m.via, "-host", benchHost, "-think", d.opts.think.String()}, clientArgs...)
	bin := d.self
	if m.receipts != "" {
		logName := cmp.Or(m.log, m.receipts)
		var prof []string
		if d.opts.profile != "" && d.measuring {
			d.profiled++
			base := filepath.Join(d.opts.profile, fmt.Sprintf("%s-%s-%d", logName, clientArgs[1], d.profiled))
			prof = []string{"--cpuprofile", base + ".pprof", "--trace", base + ".trace"}
		}
		args = append(append(prof, "exec", "--quiet",
			"--config", d.kernelYAML, "--policy", d.policyFile, "--key", d.keyFile,
			"--receipts", filepath.Join(d.work, "receipts-"+logName+".db"),
			"--receipt-mode", m.receipts, "--name", "bench/"+logName,
			"--", d.self), append(args, "-hold")...)
		bin = cmp.Or(m.bin, d.opts.agentBin)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	// exec forwards SIGTERM to its command and then removes its cgroup;
	// a SIGKILL would leave the cgroup behind.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return runResult{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return runResult{}, err
	}
	if err := cmd.Start(); err != nil {
		return runResult{}, fmt.Errorf("start %s client: %w", m.name, err)
	}
	if m.receipts != "" {
		recordPID(d.work, "exec", cmd.Process.Pid)
	}
	var res runResult
	var clientErr string
	cpu0 := time.Duration(-1)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "start":
			cpu0 = procCPU(proxyPID(m, cmd))
		case "lat":
			ns, err := strconv.ParseInt(f[1], 10, 64)
			if err == nil {
				res.lats = append(res.lats, time.Duration(ns))
			}
		case "bulk":
			if len(f) == 3 {
				b, _ := strconv.ParseInt(f[1], 10, 64)
				ns, _ := strconv.ParseInt(f[2], 10, 64)
				res.bulks = append(res.bulks, bulkResult{b, time.Duration(ns)})
			}
		case "done":
			if pid := proxyPID(m, cmd); pid != 0 && cpu0 >= 0 {
				if cpu1 := procCPU(pid); cpu1 >= 0 {
					res.cpu, res.conns = cpu1-cpu0, len(res.lats)
				}
			}
			if m.receipts != "" {
				// The programs live as long as the exec process: read their
				// statistics now, while the client holds it open.
				res.progs, err = chioProgStats(cmd.Process.Pid)
				if err != nil {
					clientErr = "read BPF statistics: " + err.Error()
				}
			}
			stdin.Close()
		case "error":
			clientErr = strings.TrimPrefix(sc.Text(), "error ")
		}
	}
	io.Copy(io.Discard, stdout)
	stdin.Close()
	werr := cmd.Wait()
	switch {
	case clientErr != "":
		return res, fmt.Errorf("%s client: %s (stderr: %s)", m.name, clientErr, strings.TrimSpace(stderr.String()))
	case ctx.Err() != nil:
		return res, fmt.Errorf("%s client: %w", m.name, ctx.Err())
	case werr != nil:
		return res, fmt.Errorf("%s client: %w (stderr: %s)", m.name, werr, strings.TrimSpace(stderr.String()))
	}
	return res, nil
}

// proxyPID is the process whose CPU time is the proxy's in mode m: the
// agent (chio-agent exec, whose child the client is) or the proxy server;
// 0 for direct.
func proxyPID(m mode, cmd *exec.Cmd) int {
	if m.receipts != "" {
		return cmd.Process.Pid
	}
	return m.pid
}

// procCPU is a process's user and system time so far, all threads, or -1
// if it cannot be read.
func procCPU(pid int) time.Duration {
	if pid == 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name may hold spaces: fields count from after its ")".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	// Clock ticks; USER_HZ is 100 on Linux.
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// chioProgStats finds the chio programs loaded by process pid (through the
// program fds it holds, so that other agents running on the machine at the
// same time are not counted) and returns their run statistics by name.
func chioProgStats(pid int) (map[string]progStats, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	seen := map[uint32]bool{}
	out := map[string]progStats{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // fd closed meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			v, ok := strings.CutPrefix(line, "prog_id:")
			if !ok {
				continue
			}
			id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err != nil || seen[uint32(id)] {
				continue
			}
			seen[uint32(id)] = true
			name, st, err := progStatsByID(ebpf.ProgramID(id))
			if err != nil {
				return nil, err
			}
			if strings.HasPrefix(name, "chio_") {
				out[name] = st
			}
		}
	}
	if _, ok := out["chio_connect4"]; !ok {
		return nil, errors.New("no chio_connect4 program among the agent's fds")
	}
	return out, nil
}

func progStatsByID(id ebpf.ProgramID) (string, progStats, error) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return "", progStats{}, fmt.Errorf("open program %d: %w", id, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return "", progStats{}, fmt.Errorf("program %d info: %w", id, err)
	}
	st, err := p.Stats()
	if err != nil {
		return "", progStats{}, fmt.Errorf("program %d stats: %w", id, err)
	}
	return info.Name, progStats{st.Runtime, st.RunCount}, nil
}

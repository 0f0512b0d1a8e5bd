//go:build ignore

// whoami.c: the id of the process that runs it, as chio.c's programs see
// process ids (in the initial pid namespace), and its start time. The agent
// runs it once with BPF_PROG_RUN, which runs a raw tracepoint program in the
// caller's context, and passes the answers to chio.c as agent_tgid and
// agent_start: an agent in a pid namespace (a Kubernetes pod) cannot learn
// that id from getpid(), and the start time tells the agent from a later
// process given the same id.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char __license[] SEC("license") = "Dual BSD/GPL";

struct task_struct {
	struct task_struct *group_leader;
	__u64 start_time;
} __attribute__((preserve_access_index));

// start_time is the caller's thread-group leader's start time, for
// user space to read after the run.
__u64 start_time = 0;

SEC("raw_tp")
int chio_whoami(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	start_time = BPF_CORE_READ(task, group_leader, start_time);
	return bpf_get_current_pid_tgid() >> 32;
}

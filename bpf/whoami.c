//go:build ignore

// whoami.c: the id of the process that runs it, as chio.c's programs see
// process ids (in the initial pid namespace). The agent runs it once with
// BPF_PROG_RUN, which runs a raw tracepoint program in the caller's context,
// and passes the answer to chio.c as agent_tgid: an agent in a pid
// namespace (a Kubernetes pod) cannot learn that id from getpid().

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("raw_tp")
int chio_whoami(void *ctx)
{
	return bpf_get_current_pid_tgid() >> 32;
}

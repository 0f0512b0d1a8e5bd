//go:build ignore

// chio.c: the connect-time redirect of protected workloads.
//
// A workload is a cgroup v2 subtree. The programs attach once, at a cgroup that
// contains every workload (the cgroup2 root in production), and decide per
// socket by looking the connecting task's cgroup and its ancestors up in the
// `workloads` map. A protected TCP connect() is rewritten to the workload's
// listener; the original destination is kept under the socket cookie until the
// connection is established, then re-keyed by the client's 4-tuple side
// (netns cookie, local address, local port), which is what the proxy sees as
// the peer of the connection it accepts.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// From <sys/socket.h>, which cannot be included for the BPF target.
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1

char __license[] SEC("license") = "Dual BSD/GPL";

// MAX_CGROUP_LEVEL bounds the ancestor walk; deeper cgroups are matched on
// their first MAX_CGROUP_LEVEL levels only.
#define MAX_CGROUP_LEVEL 16
#define TASK_COMM_LEN 16
#define READ_CTX32(f) (*(volatile __u32 *)&(f))

// Addresses are stored as 16 bytes in network order, IPv4 as v4-mapped IPv6
// (::ffff:a.b.c.d), so one key type serves both families and an AF_INET6
// socket connecting to a v4-mapped address matches an IPv4 listener's view.
struct workload {
	__u32 id;          // the agent's workload id, echoed in events
	__u32 listen_ip4;  // IPv4 listener address, network order
	__u32 listen_ip6[4]; // IPv6 listener address, network order
	__u16 listen_port4;  // IPv4 listener port, network order
	__u16 listen_port6;  // IPv6 listener port, network order
};

struct orig_dst {
	__u32 addr[4];     // original destination, v4-mapped for IPv4, network order
	__u16 port;        // original destination port, network order
	__u16 family;      // AF_INET or AF_INET6 of the connecting socket
	__u32 workload_id;
	__u32 pid;         // tgid of the connecting task
	__u32 uid;
	__u64 cgroup_id;   // cgroup of the connecting task
	__u64 netns_cookie;
	__u8 comm[TASK_COMM_LEN];
};

struct tuple_key {
	__u64 netns_cookie;
	__u32 addr[4];     // client's local address, v4-mapped for IPv4
	__u16 port;        // client's local port, host order
	__u16 pad0;
	__u32 pad1;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);            // cgroup id
	__type(value, struct workload);
} workloads SEC(".maps");

// Pending originals: between connect() and the handshake. LRU so that sockets
// that never complete cannot fill it; sock_release deletes them too.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);            // socket cookie
	__type(value, struct orig_dst);
} orig_by_cookie SEC(".maps");

// Established originals, looked up (and deleted) by the proxy on accept. LRU
// so that connections the proxy never accepts cannot fill it.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple_key);
	__type(value, struct orig_dst);
} orig_by_tuple SEC(".maps");

// Sockets carrying this mark belong to the agent and are never redirected, so
// the proxy's own outbound dials cannot loop back into it. 0 disables the check.
volatile const __u32 agent_mark = 0;

static __always_inline struct workload *lookup_workload(__u64 *cgid)
{
	struct workload *found = 0;
	__u64 id;

	// Walk from the root down and keep the deepest match: a workload nested in
	// another uses its own listener.
	for (int level = 0; level < MAX_CGROUP_LEVEL; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (id == 0)
			break;
		struct workload *w = bpf_map_lookup_elem(&workloads, &id);
		if (w)
			found = w;
	}
	*cgid = bpf_get_current_cgroup_id();
	return found;
}

static __always_inline int skip_socket(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	if (agent_mark != 0 && sk->mark == agent_mark)
		return 1;
	return 0;
}

static __always_inline void fill_process(struct orig_dst *o, struct bpf_sock_addr *ctx,
					 struct workload *w, __u64 cgid)
{
	o->workload_id = w->id;
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->uid = (__u32)bpf_get_current_uid_gid();
	o->cgroup_id = cgid;
	o->netns_cookie = bpf_get_netns_cookie(ctx);
	bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

SEC("cgroup/connect4")
int chio_connect4(struct bpf_sock_addr *ctx)
{
	__u64 cgid;

	if (skip_socket(ctx))
		return 1;
	struct workload *w = lookup_workload(&cgid);
	if (!w || w->listen_port4 == 0)
		return 1;

	struct orig_dst o = {};
	o.addr[2] = bpf_htonl(0x0000ffff);
	o.addr[3] = ctx->user_ip4;
	o.port = (__u16)ctx->user_port;
	o.family = AF_INET;
	fill_process(&o, ctx, w, cgid);

	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&orig_by_cookie, &cookie, &o, BPF_ANY))
		return 0; // cannot record where it wanted to go: refuse, never pass unfiltered

	ctx->user_ip4 = w->listen_ip4;
	ctx->user_port = (__u32)w->listen_port4;
	return 1;
}

SEC("cgroup/connect6")
int chio_connect6(struct bpf_sock_addr *ctx)
{
	__u64 cgid;

	if (skip_socket(ctx))
		return 1;
	struct workload *w = lookup_workload(&cgid);
	if (!w)
		return 1;

	struct orig_dst o = {};
	o.addr[0] = ctx->user_ip6[0];
	o.addr[1] = ctx->user_ip6[1];
	o.addr[2] = ctx->user_ip6[2];
	o.addr[3] = ctx->user_ip6[3];
	o.port = (__u16)ctx->user_port;
	o.family = AF_INET6;
	fill_process(&o, ctx, w, cgid);

	int mapped = o.addr[0] == 0 && o.addr[1] == 0 && o.addr[2] == bpf_htonl(0x0000ffff);
	if (mapped ? w->listen_port4 == 0 : w->listen_port6 == 0)
		return 0; // no listener for this family: refuse rather than pass

	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&orig_by_cookie, &cookie, &o, BPF_ANY))
		return 0;

	if (mapped) {
		// An AF_INET6 socket reaching IPv4: send it to the IPv4 listener.
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = w->listen_ip4;
		ctx->user_port = (__u32)w->listen_port4;
	} else {
		ctx->user_ip6[0] = w->listen_ip6[0];
		ctx->user_ip6[1] = w->listen_ip6[1];
		ctx->user_ip6[2] = w->listen_ip6[2];
		ctx->user_ip6[3] = w->listen_ip6[3];
		ctx->user_port = (__u32)w->listen_port6;
	}
	return 1;
}

SEC("sockops")
int chio_sockops(struct bpf_sock_ops *ctx)
{
	if (ctx->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;

	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct orig_dst *o = bpf_map_lookup_elem(&orig_by_cookie, &cookie);
	if (!o)
		return 1;

	struct tuple_key k = {};
	k.netns_cookie = bpf_get_netns_cookie(ctx);
	// Read every context field unconditionally: the verifier refuses a context
	// pointer that the compiler has offset differently on two branches.
	// Volatile 4-byte reads also keep it from merging two fields into one
	// 8-byte load, which bpf_sock_ops does not allow.
	__u32 family = READ_CTX32(ctx->family);
	__u32 ip4 = READ_CTX32(ctx->local_ip4);
	__u32 ip6_0 = READ_CTX32(ctx->local_ip6[0]), ip6_1 = READ_CTX32(ctx->local_ip6[1]);
	__u32 ip6_2 = READ_CTX32(ctx->local_ip6[2]), ip6_3 = READ_CTX32(ctx->local_ip6[3]);
	if (family == AF_INET) {
		k.addr[2] = bpf_htonl(0x0000ffff);
		k.addr[3] = ip4;
	} else {
		k.addr[0] = ip6_0;
		k.addr[1] = ip6_1;
		k.addr[2] = ip6_2;
		k.addr[3] = ip6_3;
	}
	k.port = (__u16)READ_CTX32(ctx->local_port);
	bpf_map_update_elem(&orig_by_tuple, &k, o, BPF_ANY);
	bpf_map_delete_elem(&orig_by_cookie, &cookie);
	return 1;
}

SEC("cgroup/sock_release")
int chio_sock_release(struct bpf_sock *ctx)
{
	// A socket that never completed its handshake leaves its pending original
	// behind; drop it when the socket goes away.
	__u64 cookie = bpf_get_socket_cookie(ctx);
	bpf_map_delete_elem(&orig_by_cookie, &cookie);
	return 1;
}

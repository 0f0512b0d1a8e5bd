//go:build ignore

// inbound.c: refusing inbound connections and datagrams to protected
// workloads, unless their configuration allows the local port (inbound_allow).
//
// A bind() to a fixed port, TCP or UDP, fails at once with EPERM: nothing can
// listen or receive there, and no peer hangs. A TCP listen() on a port the
// kernel picks (no bind, or bind to port 0) cannot be failed by any cgroup
// hook; the listener is marked at BPF_SOCK_OPS_TCP_LISTEN_CB and every packet
// to it is dropped at cgroup_skb/ingress (a peer's connect times out), except
// the agent's relay: the workload itself, or another protected workload, can
// still reach it through the proxy, decided and receipted as egress. Each refusal
// is reported like every kernel refusal (report() in chio.c) as
// EVENT_INBOUND_REFUSED, so the agent writes a deny receipt for it.
//
// Outbound connections are untouched: connect() autobinds without the bind
// hooks, and the replies of the workload's own connections arrive on its
// connected sockets, never on a refused listener.
//
// chio.c includes this file at its end: one object, one set of maps. An
// EVENT_INBOUND_REFUSED event's rule_id carries the operation refused
// (INBOUND_OP_*), its addr and port the local address and port.

enum inbound_op {
	INBOUND_OP_BIND = 1,   // bind() to a fixed port: failed with EPERM
	INBOUND_OP_LISTEN = 2, // listen() on a port the kernel picked: packets dropped
};

struct inbound_key {
	__u32 workload_id;
	__u8 proto;        // IPPROTO_TCP or IPPROTO_UDP
	__u8 pad;
	__u16 port;        // local port, host order; 0 = every port
};

// Ports a workload may receive on. No entry: refused.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct inbound_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inbound_allow SEC(".maps");

// Refused listeners, by socket cookie: every packet to them is dropped. A
// cookie is never reused, so an entry outliving its socket is harmless, and
// LRU bounds the map.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);            // socket cookie of the listener
	__type(value, __u32);          // workload id
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inbound_refused SEC(".maps");

static __always_inline int inbound_allowed(__u32 workload_id, __u8 proto, __u16 port)
{
	struct inbound_key k = {};
	k.workload_id = workload_id;
	k.proto = proto;
	k.port = port;
	if (port != 0 && bpf_map_lookup_elem(&inbound_allow, &k))
		return 1;
	k.port = 0;
	return bpf_map_lookup_elem(&inbound_allow, &k) != 0;
}

// inbound_bind decides a bind() of a protected workload. A fixed port is a
// place to be reached at: refused (EPERM) unless allowed. Port 0 asks for
// any port, as a client may: passed, and a listen() on it is caught below.
static __always_inline int inbound_bind(struct bpf_sock_addr *ctx, int v6)
{
	if (agent_socket(ctx))
		return 1;
	__u32 type = ctx->type;
	if (type != SOCK_STREAM && type != SOCK_DGRAM)
		return 1;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (port == 0)
		return 1;
	struct workload wl;
	if (!lookup_workload(&wl, bpf_get_current_cgroup_id()))
		return 1;
	__u8 proto = type == SOCK_STREAM ? IPPROTO_TCP : IPPROTO_UDP;
	if (inbound_allowed(wl.id, proto, port))
		return 1;
	__u32 addr[4];
	dst_addr(ctx, v6, addr);
	report(EVENT_INBOUND_REFUSED, &wl, proto, port, addr, INBOUND_OP_BIND, v6);
	return 0;
}

SEC("cgroup/bind4")
int chio_inbound_bind4(struct bpf_sock_addr *ctx)
{
	return inbound_bind(ctx, 0);
}

SEC("cgroup/bind6")
int chio_inbound_bind6(struct bpf_sock_addr *ctx)
{
	return inbound_bind(ctx, 1);
}

// A TCP socket that listens without a fixed port (unbound, or bound to port
// 0) gets one from the kernel, past every hook that could fail the call. Its
// listen() succeeds, but the listener is marked refused and every packet to
// it dropped, and the agent is told so that it writes a receipt.
SEC("sockops")
int chio_inbound_sockops(struct bpf_sock_ops *ctx)
{
	if (ctx->op != BPF_SOCK_OPS_TCP_LISTEN_CB)
		return 1;
	struct workload wl;
	if (!lookup_workload(&wl, bpf_get_current_cgroup_id()))
		return 1;
	__u16 port = (__u16)READ_CTX32(ctx->local_port);
	if (inbound_allowed(wl.id, IPPROTO_TCP, port))
		return 1;
	__u32 addr[4] = {};
	__u32 family = sockops_local_addr(ctx, addr);
	__u64 cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&inbound_refused, &cookie, &wl.id, BPF_ANY);
	report(EVENT_INBOUND_REFUSED, &wl, IPPROTO_TCP, port, addr, INBOUND_OP_LISTEN, family == AF_INET6);
	return 1;
}

// Packets to a refused listener are dropped (its SYNs first of all), except
// the agent's own: a protected workload's connection to its own listener is
// relayed by the proxy, decided and receipted as egress, and the relay's
// socket carries the agent's mark, which loopback delivery keeps.
//
// It runs for every packet to every socket below the attach point: anything
// but a listener is passed after a few loads, before any map lookup.
SEC("cgroup_skb/ingress")
int chio_inbound_ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->state != BPF_TCP_LISTEN)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(skb);
	if (!bpf_map_lookup_elem(&inbound_refused, &cookie))
		return 1;
	if (agent_mark != 0 && skb->mark == agent_mark)
		return 1;
	return 0;
}

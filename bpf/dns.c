//go:build ignore

// dns.c: protected workloads' DNS goes to the agent, not to a resolver.
//
// Included by chio.c (it uses its maps and helpers). For a workload whose
// listeners include a DNS listener (workload.dns_port4/6 not 0), every UDP
// datagram and TCP connection to port 53, whatever the address, is sent to
// the agent's DNS listener in the workload's network namespace, on the
// address of its TCP listener:
//
// - UDP, sendmsg4/6 (unconnected) and connect4/6 (connected): the socket's
//   original destination, with who sent it, is kept in `dns_origs` under the
//   socket cookie (the last one, for an unconnected socket that sends to
//   several resolvers). The agent finds the sending socket of each datagram
//   it reads through sock_diag (the kernel's socket table: netns, address,
//   port -> cookie), then its entry here: the workload is the one the
//   kernel recorded at the send, never one the agent guesses from an
//   address. recvmsg4/6 give a datagram that comes from the DNS listener to
//   a socket with an entry the original as its source, so the answer looks,
//   to the client, as if the resolver it addressed had sent it (a connected
//   socket is connected to the listener, which is the source the kernel
//   checks; the application sees the resolver). The entry goes with the
//   socket (sock_release); `dns_origs` is an LRU so that sockets kept open
//   cannot fill it: an entry evicted costs its socket's next answer its
//   restored source (the agent cannot attribute it and answers nothing).
//
// - TCP: connect4/6 to port 53 go to the DNS listener's TCP side, through
//   the pending originals every redirected connection uses (chio.c's tcp()),
//   which the agent takes on accept as it does for the proxy.
//
// A workload with no DNS listener keeps the older rule: DNS to the
// configured resolvers passes untouched.

// dns_orig is a UDP socket's DNS original and the listener it was sent to.
struct dns_orig {
	struct orig_dst orig;
	__u32 listen_addr[4]; // the DNS listener the datagrams went to, v4-mapped for IPv4
	__u16 listen_port;    // its port, network order
	__u16 pad;
	__u32 pad2;
};

// Referenced so that bpf2go can emit the Go type.
const struct dns_orig *unused_dns_orig __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);            // socket cookie
	__type(value, struct dns_orig);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_origs SEC(".maps");

// set_user_addr writes addr (v4-mapped for IPv4) and port (network order)
// into ctx's user_ fields: the destination in connect and sendmsg, the
// source in recvmsg.
static __always_inline void set_user_addr(struct bpf_sock_addr *ctx, int v6, const __u32 addr[4], __u16 port)
{
	if (!v6) {
		ctx->user_ip4 = addr[3];
	} else {
		ctx->user_ip6[0] = addr[0];
		ctx->user_ip6[1] = addr[1];
		ctx->user_ip6[2] = addr[2];
		ctx->user_ip6[3] = addr[3];
	}
	ctx->user_port = (__u32)port;
}

// dns_proxied says whether the workload's DNS goes to the agent.
static __always_inline int dns_proxied(struct workload *w)
{
	return w->dns_port4 != 0 || w->dns_port6 != 0;
}

// dns_udp redirects a UDP connect() or sendmsg() to port 53 of a protected
// workload to its DNS listener, and records where it was going.
static __always_inline int dns_udp(struct bpf_sock_addr *ctx, struct workload *w, int v6, __u32 addr[4])
{
	int mapped = addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0x0000ffff);
	__u16 lport = mapped ? w->dns_port4 : w->dns_port6;
	if (lport == 0) {
		// No DNS listener for this family: refuse rather than pass.
		report(EVENT_UDP_REFUSED, w, IPPROTO_UDP, 53, addr, 0, v6);
		return 0;
	}
	struct dns_orig d = {};
	fill_orig(&d.orig, addr, (__u16)ctx->user_port, v6, w->id, bpf_get_current_cgroup_id());
	d.listen_port = lport;
	if (mapped) {
		d.listen_addr[2] = bpf_htonl(0x0000ffff);
		d.listen_addr[3] = w->listen_ip4;
	} else {
		d.listen_addr[0] = w->listen_ip6[0];
		d.listen_addr[1] = w->listen_ip6[1];
		d.listen_addr[2] = w->listen_ip6[2];
		d.listen_addr[3] = w->listen_ip6[3];
	}
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&dns_origs, &cookie, &d, BPF_ANY)) {
		// Cannot record where it wanted to go: refuse, never pass unfiltered.
		report(EVENT_NO_RECORD, w, IPPROTO_UDP, 53, addr, 0, v6);
		return 0;
	}
	set_user_addr(ctx, v6, d.listen_addr, lport);
	return 1;
}

// dns_recvmsg gives a datagram from the DNS listener, received by a socket
// that sent DNS there, the source the socket addressed. recvmsg programs
// must return 1: they change the address, never refuse.
static __always_inline int dns_recvmsg(struct bpf_sock_addr *ctx, int v6)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct dns_orig *d = bpf_map_lookup_elem(&dns_origs, &cookie);
	if (!d)
		return 1;
	__u32 src[4];
	dst_addr(ctx, v6, src); // in recvmsg, the user_ fields are the source
	if ((__u16)ctx->user_port != d->listen_port || src[0] != d->listen_addr[0] ||
	    src[1] != d->listen_addr[1] || src[2] != d->listen_addr[2] || src[3] != d->listen_addr[3])
		return 1;
	set_user_addr(ctx, v6, d->orig.addr, d->orig.port);
	return 1;
}

SEC("cgroup/recvmsg4")
int chio_recvmsg4(struct bpf_sock_addr *ctx)
{
	return dns_recvmsg(ctx, 0);
}

SEC("cgroup/recvmsg6")
int chio_recvmsg6(struct bpf_sock_addr *ctx)
{
	return dns_recvmsg(ctx, 1);
}

// dns_release forgets a socket's DNS original when it goes away.
static __always_inline void dns_release(__u64 cookie)
{
	bpf_map_delete_elem(&dns_origs, &cookie);
}

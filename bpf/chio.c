//go:build ignore

// chio.c: connect-time enforcement for protected workloads.
//
// A workload is a cgroup v2 subtree. The programs attach once, at a cgroup that
// contains every workload (the cgroup2 root in production), and decide per
// socket by looking the connecting task's cgroup and its ancestors up in the
// `workloads` map.
//
// TCP: a protected connect() is checked against the static verdict map (CIDR +
// port: deny refuses at once, exempt passes untouched), then rewritten to the
// workload's listener. The original destination is kept under the socket
// cookie until the connection is established, then re-keyed by the client side
// (netns cookie, local address, local port), which is what the proxy sees as
// the peer of the connection it accepts.
//
// UDP: everything from a protected workload is refused except traffic to the
// configured DNS resolvers and exempt destinations, so QUIC cannot go around
// the TCP path. Refusals are reported through a ring buffer, rate-limited per
// workload and destination so that a flood cannot flood the receipt log.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

// From <sys/socket.h> and <netinet/in.h>, which cannot be included for the BPF target.
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

char __license[] SEC("license") = "Dual BSD/GPL";

// MAX_CGROUP_LEVEL bounds the ancestor walk; deeper cgroups are matched on
// their first MAX_CGROUP_LEVEL levels only.
#define MAX_CGROUP_LEVEL 16
#define TASK_COMM_LEN 16
#define READ_CTX32(f) (*(volatile __u32 *)&(f))

// One event per workload, protocol and destination per this many ns at most;
// the event carries how many refusals it stands for.
#define EVENT_INTERVAL_NS 1000000000ULL

enum verdict {
	VERDICT_NONE = 0,
	VERDICT_DENY = 1,   // refuse at connect()/sendmsg(), report an event
	VERDICT_EXEMPT = 2, // pass untouched (operator-configured exemption)
};

enum event_kind {
	EVENT_TCP_DENIED = 1, // refused by the static verdict map
	EVENT_UDP_REFUSED = 2, // UDP from a protected workload, not DNS, not exempt
	EVENT_NO_RECORD = 3,   // the original could not be recorded: refused
	EVENT_GUARDED = 4,     // a guarded cgroup path the agent has not protected yet
};

// Addresses are stored as 16 bytes in network order, IPv4 as v4-mapped IPv6
// (::ffff:a.b.c.d), so one key type serves both families and an AF_INET6
// socket connecting to a v4-mapped address matches an IPv4 listener's view.
// workload.flags
#define WL_HAS_VERDICTS 1 // the verdict map holds rules for this workload

struct workload {
	__u32 id;            // the agent's workload id, echoed in events
	__u32 flags;         // WL_*
	__u32 listen_ip4;    // IPv4 listener address, network order
	__u32 listen_ip6[4]; // IPv6 listener address, network order
	__u16 listen_port4;  // IPv4 listener port, network order; 0: refuse IPv4
	__u16 listen_port6;  // IPv6 listener port, network order; 0: refuse IPv6
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

// LPM key: workload, protocol and port match exactly (port 0 = any port, looked
// up second), the address by prefix. prefixlen counts bits from workload_id on.
struct verdict_key {
	__u32 prefixlen;
	__u32 workload_id;
	__u8 proto;        // IPPROTO_TCP or IPPROTO_UDP
	__u8 pad;
	__u16 port;        // host order; 0 = any port
	__u32 addr[4];     // v4-mapped for IPv4, network order
};

struct verdict_val {
	__u32 verdict;     // enum verdict
	__u32 rule_id;     // the agent's id of the rule, echoed in events
};

struct resolver_key {
	__u32 addr[4];     // v4-mapped for IPv4, network order
	__u16 port;        // host order
	__u16 pad;
};

struct event {
	__u64 cgroup_id;
	__u32 kind;        // enum event_kind
	__u32 workload_id;
	__u32 pid;
	__u32 uid;
	__u32 addr[4];     // destination, v4-mapped for IPv4, network order
	__u16 port;        // destination port, host order
	__u8 proto;
	__u8 pad;
	__u32 rule_id;
	__u32 count;       // refusals this event stands for (1 + suppressed)
	__u8 comm[TASK_COMM_LEN];
};

// Referenced so that bpf2go can emit the Go type of ring-buffer records.
const struct event *unused_event __attribute__((unused));

struct rate_key {
	__u32 workload_id;
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 kind;
};

struct rate_val {
	__u64 last_ns;     // when the last event for this key was emitted
	__u32 suppressed;  // refusals since then
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);            // cgroup id
	__type(value, struct workload);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} workloads SEC(".maps");

// Pending originals, between connect() and the handshake, by socket cookie.
// Every entry has a deterministic end: sockops deletes it when the connection
// is established, sock_release when the socket goes away without. So a plain
// preallocated hash (cheaper per update than an LRU, measured ~120 ns); if it
// ever filled, connects would be refused and reported, never passed.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);            // socket cookie
	__type(value, struct orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} orig_pending SEC(".maps");

// Established originals, looked up (and deleted) by the proxy on accept. LRU
// so that connections the proxy never accepts cannot fill it.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple_key);
	__type(value, struct orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} orig_by_tuple SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct verdict_key);
	__type(value, struct verdict_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct resolver_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} resolvers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct rate_key);
	__type(value, struct rate_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

struct cg_cache_val {
	__u32 gen;           // generation the entry was made in
	__u32 found;         // LOOKUP_*; 0: not protected
	struct workload w;
};

// Per-cgroup cache of the workload lookup (LRU: cgroups come and go).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);            // cgroup id
	__type(value, struct cg_cache_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cg_cache SEC(".maps");

// generation[0] is bumped by the agent after each change to workloads.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} generation SEC(".maps");

// ---- Guarded cgroup paths -------------------------------------------------
//
// A workload named by path is keyed in `workloads` by its cgroup id (the
// directory's inode). A directory removed and made again at the same path
// (a systemd unit restart) gets a new id, which `workloads` does not know:
// its processes would connect unprotected until the agent noticed. So the
// agent also enters every workload's (parent cgroup id, directory name) in
// `guards`, and a cgroup the workload walk does not protect whose own
// directory (or an ancestor's, below the deepest protected one) is guarded is
// refused, with an event, until the agent protects its new id. Only a cache
// miss in lookup_workload walks the guards, so unprotected processes pay it
// once per cgroup and generation.

#define CGROUP_NAME_LEN 256 // NAME_MAX + 1

struct guard_key {
	__u64 parent_id;              // cgroup id of the parent directory
	char name[CGROUP_NAME_LEN];   // the directory's name, NUL-padded
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct guard_key);
	__type(value, __u32);          // workload id
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} guards SEC(".maps");

// Room for one guard_key, which is too big for the stack beside the rest.
// The programs run with migration disabled but may be preempted, so another
// connect on the same CPU can overwrite the key between its making and its
// lookup: seq is bumped before each use and checked after it, and a walk
// that saw it change is done again.
struct guard_scratch {
	__u64 seq;
	struct guard_key key;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct guard_scratch);
} guard_scratch SEC(".maps");

// The kernel types the guard walk reads, as CO-RE relocations: only the
// fields named here, found by name in the running kernel's BTF.
struct kernfs_node {
	__u64 id;
	const char *name;
} __attribute__((preserve_access_index));

// kernfs_node.parent became __parent in Linux 6.15.
struct kernfs_node___new {
	struct kernfs_node *__parent;
} __attribute__((preserve_access_index));

struct kernfs_node___old {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

struct cgroup {
	int level;
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

struct task_struct {
	struct css_set *cgroups;
} __attribute__((preserve_access_index));

static __always_inline struct kernfs_node *kn_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(((struct kernfs_node___new *)0)->__parent))
		return BPF_CORE_READ((struct kernfs_node___new *)kn, __parent);
	return BPF_CORE_READ((struct kernfs_node___old *)kn, parent);
}

#define GUARD_INTERFERED 0xffffffff // the scratch key was overwritten mid-walk

// guard_walk returns the id of the workload guarding the current task's
// cgroup directory, or one of its ancestors' deeper than level stop (the
// deepest protected ancestor); 0 when none is guarded.
static __always_inline __u32 guard_walk(struct guard_scratch *s, int stop)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct cgroup *cg = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	if (!cg)
		return 0;
	int level = BPF_CORE_READ(cg, level);
	struct kernfs_node *kn = BPF_CORE_READ(cg, kn);
	for (int i = 0; i < MAX_CGROUP_LEVEL; i++) {
		if (!kn || level <= stop)
			break;
		struct kernfs_node *parent = kn_parent(kn);
		if (!parent)
			break;
		__u64 seq = s->seq + 1;
		s->seq = seq;
		struct guard_key *k = &s->key;
		__builtin_memset(k, 0, sizeof(*k));
		k->parent_id = BPF_CORE_READ(parent, id);
		const char *name = BPF_CORE_READ(kn, name);
		bpf_probe_read_kernel_str(k->name, sizeof(k->name), name);
		__u32 *id = bpf_map_lookup_elem(&guards, k);
		__u32 found = id ? *id : 0;
		if (s->seq != seq)
			return GUARD_INTERFERED;
		if (found)
			return found;
		kn = parent;
		level--;
	}
	return 0;
}

// guard_lookup is guard_walk done again while another connect on this CPU
// interferes with it; after three tries it gives GUARD_INTERFERED.
static __always_inline __u32 guard_lookup(int stop)
{
	__u32 zero = 0;
	struct guard_scratch *s = bpf_map_lookup_elem(&guard_scratch, &zero);
	if (!s)
		return GUARD_INTERFERED;
	__u32 g = GUARD_INTERFERED;
	for (int try = 0; try < 3 && g == GUARD_INTERFERED; try++)
		g = guard_walk(s, stop);
	return g;
}

// Sockets carrying this mark belong to the agent and are never touched, so the
// proxy's own upstream dials cannot loop back into it. 0 disables the check.
volatile const __u32 agent_mark = 0;

// walk_workload finds the workload of the current task's cgroup: the deepest
// of its ancestors (itself included) in the workloads map.
// *found_level is the level of the match (-1 when none).
static __always_inline struct workload *walk_workload(int *found_level)
{
	struct workload *found = 0;
	__u64 id;

	*found_level = -1;
	// Walk from the root down and keep the deepest match: a workload nested in
	// another uses its own listener.
	for (int level = 0; level < MAX_CGROUP_LEVEL; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (id == 0)
			break;
		struct workload *w = bpf_map_lookup_elem(&workloads, &id);
		if (w) {
			found = w;
			*found_level = level;
		}
	}
	return found;
}

// lookup_workload results.
#define LOOKUP_PROTECTED 1 // *out is the cgroup's workload
#define LOOKUP_GUARDED 2   // a guarded path not yet protected: refuse (out->id names it)

// lookup_workload is walk_workload through a per-cgroup cache: one lookup
// instead of one per level for every connect. An entry is valid only for
// the generation it was made in; the agent bumps the generation after every
// change to the workloads map, so a stale answer is never used (an entry
// made from the old map while the agent bumps is tagged with the old
// generation, and is walked again).
static __always_inline int lookup_workload(struct workload *out, __u64 cgid)
{
	__u32 zero = 0;
	__u32 *genp = bpf_map_lookup_elem(&generation, &zero);
	__u32 gen = genp ? *genp : 0;

	struct cg_cache_val *c = bpf_map_lookup_elem(&cg_cache, &cgid);
	if (c && c->gen == gen) {
		if (!c->found)
			return 0;
		*out = c->w;
		return c->found;
	}
	struct cg_cache_val v = {};
	v.gen = gen;
	int level;
	struct workload *w = walk_workload(&level);
	if (w) {
		v.found = LOOKUP_PROTECTED;
		v.w = *w;
	}
	// A guarded directory below the deepest protected cgroup (or with none
	// above it) is a workload's path made again: refuse until protected.
	__u32 guard = guard_lookup(level);
	if (guard == GUARD_INTERFERED) {
		// Unknown whether a guarded path: refuse this once and cache
		// nothing, rather than pass (the event names the protected
		// ancestor's workload, or none).
		*out = v.w;
		return LOOKUP_GUARDED;
	}
	if (guard) {
		__builtin_memset(&v.w, 0, sizeof(v.w));
		v.found = LOOKUP_GUARDED;
		v.w.id = guard;
	}
	*out = v.w;
	bpf_map_update_elem(&cg_cache, &cgid, &v, BPF_ANY);
	return v.found;
}

static __always_inline int agent_socket(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	return agent_mark != 0 && sk->mark == agent_mark;
}

// dst_addr reads the destination of ctx as a v4-mapped/IPv6 address.
static __always_inline void dst_addr(struct bpf_sock_addr *ctx, int v6, __u32 addr[4])
{
	if (!v6) {
		addr[0] = 0;
		addr[1] = 0;
		addr[2] = bpf_htonl(0x0000ffff);
		addr[3] = ctx->user_ip4;
		return;
	}
	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
}

static __always_inline struct verdict_val *lookup_verdict(__u32 workload_id, __u8 proto,
							   __u16 port, __u32 addr[4])
{
	struct verdict_key k = {};
	k.prefixlen = 64 + 128;
	k.workload_id = workload_id;
	k.proto = proto;
	k.port = port;
	k.addr[0] = addr[0];
	k.addr[1] = addr[1];
	k.addr[2] = addr[2];
	k.addr[3] = addr[3];
	struct verdict_val *v = bpf_map_lookup_elem(&verdicts, &k);
	if (v)
		return v;
	k.port = 0;
	return bpf_map_lookup_elem(&verdicts, &k);
}

static __always_inline void report(__u32 kind, struct workload *w, __u8 proto, __u16 port,
				   __u32 addr[4], __u32 rule_id)
{
	struct rate_key rk = {};
	rk.workload_id = w->id;
	rk.addr[0] = addr[0];
	rk.addr[1] = addr[1];
	rk.addr[2] = addr[2];
	rk.addr[3] = addr[3];
	rk.port = port;
	rk.proto = proto;
	rk.kind = kind;

	__u64 now = bpf_ktime_get_ns();
	__u32 count = 1;
	struct rate_val *rv = bpf_map_lookup_elem(&event_rate, &rk);
	if (rv) {
		if (now - rv->last_ns < EVENT_INTERVAL_NS) {
			__sync_fetch_and_add(&rv->suppressed, 1);
			return;
		}
		count += rv->suppressed;
		rv->suppressed = 0;
		rv->last_ns = now;
	} else {
		struct rate_val nv = {.last_ns = now};
		bpf_map_update_elem(&event_rate, &rk, &nv, BPF_ANY);
	}

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return; // the ring is full: the agent counts drops from the rate map's totals
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->kind = kind;
	e->workload_id = w->id;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->addr[0] = addr[0];
	e->addr[1] = addr[1];
	e->addr[2] = addr[2];
	e->addr[3] = addr[3];
	e->port = port;
	e->proto = proto;
	e->pad = 0;
	e->rule_id = rule_id;
	e->count = count;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int is_resolver(__u32 addr[4], __u16 port)
{
	struct resolver_key k = {};
	k.addr[0] = addr[0];
	k.addr[1] = addr[1];
	k.addr[2] = addr[2];
	k.addr[3] = addr[3];
	k.port = port;
	return bpf_map_lookup_elem(&resolvers, &k) != 0;
}

// udp decides a UDP connect() or sendmsg() of a protected workload.
static __always_inline int udp(struct bpf_sock_addr *ctx, struct workload *w, int v6)
{
	__u32 addr[4];
	dst_addr(ctx, v6, addr);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (is_resolver(addr, port))
		return 1;
	__u32 rule = 0;
	if (w->flags & WL_HAS_VERDICTS) {
		struct verdict_val *v = lookup_verdict(w->id, IPPROTO_UDP, port, addr);
		if (v && v->verdict == VERDICT_EXEMPT)
			return 1;
		if (v)
			rule = v->rule_id;
	}
	report(EVENT_UDP_REFUSED, w, IPPROTO_UDP, port, addr, rule);
	return 0;
}

// tcp decides a TCP connect() of a protected workload and redirects it.
static __always_inline int tcp(struct bpf_sock_addr *ctx, struct workload *w, int v6, __u64 cgid)
{
	__u32 addr[4];
	dst_addr(ctx, v6, addr);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	// DNS over TCP to a configured resolver is part of name resolution
	// (port 53 only: the lookup is not worth making for every connect).
	if (port == 53 && is_resolver(addr, port))
		return 1;
	if (w->flags & WL_HAS_VERDICTS) {
		struct verdict_val *v = lookup_verdict(w->id, IPPROTO_TCP, port, addr);
		if (v && v->verdict == VERDICT_EXEMPT)
			return 1;
		if (v && v->verdict == VERDICT_DENY) {
			report(EVENT_TCP_DENIED, w, IPPROTO_TCP, port, addr, v->rule_id);
			return 0;
		}
	}

	int mapped = addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0x0000ffff);
	if (mapped ? w->listen_port4 == 0 : w->listen_port6 == 0)
		return 0; // no listener for this family: refuse rather than pass

	struct orig_dst o = {};
	o.addr[0] = addr[0];
	o.addr[1] = addr[1];
	o.addr[2] = addr[2];
	o.addr[3] = addr[3];
	o.port = (__u16)ctx->user_port;
	o.family = v6 ? AF_INET6 : AF_INET;
	o.workload_id = w->id;
	o.pid = bpf_get_current_pid_tgid() >> 32;
	o.uid = (__u32)bpf_get_current_uid_gid();
	o.cgroup_id = cgid;
	o.netns_cookie = bpf_get_netns_cookie(ctx);
	bpf_get_current_comm(&o.comm, sizeof(o.comm));

	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&orig_pending, &cookie, &o, BPF_ANY)) {
		// Cannot record where it wanted to go: refuse, never pass unfiltered.
		report(EVENT_NO_RECORD, w, IPPROTO_TCP, port, addr, 0);
		return 0;
	}

	if (mapped) {
		if (!v6) {
			ctx->user_ip4 = w->listen_ip4;
		} else {
			// An AF_INET6 socket reaching IPv4: send it to the IPv4 listener.
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
			ctx->user_ip6[3] = w->listen_ip4;
		}
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

// refuse_guarded refuses a connect or send from a guarded cgroup path that
// the agent has not protected yet, and reports it.
static __always_inline int refuse_guarded(struct bpf_sock_addr *ctx, struct workload *w, int v6, __u8 proto)
{
	__u32 addr[4];
	dst_addr(ctx, v6, addr);
	report(EVENT_GUARDED, w, proto, bpf_ntohs((__u16)ctx->user_port), addr, 0);
	return 0;
}

static __always_inline int decide(struct bpf_sock_addr *ctx, int v6)
{
	if (agent_socket(ctx))
		return 1;
	__u32 type = ctx->type;
	if (type != SOCK_STREAM && type != SOCK_DGRAM)
		return 1;
	struct workload wl;
	__u64 cgid = bpf_get_current_cgroup_id();
	int r = lookup_workload(&wl, cgid);
	if (!r)
		return 1;
	struct workload *w = &wl;
	if (r == LOOKUP_GUARDED)
		return refuse_guarded(ctx, w, v6, type == SOCK_DGRAM ? IPPROTO_UDP : IPPROTO_TCP);
	if (type == SOCK_DGRAM)
		return udp(ctx, w, v6);
	return tcp(ctx, w, v6, cgid);
}

SEC("cgroup/connect4")
int chio_connect4(struct bpf_sock_addr *ctx)
{
	return decide(ctx, 0);
}

SEC("cgroup/connect6")
int chio_connect6(struct bpf_sock_addr *ctx)
{
	return decide(ctx, 1);
}

SEC("cgroup/sendmsg4")
int chio_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (agent_socket(ctx))
		return 1;
	struct workload wl;
	int r = lookup_workload(&wl, bpf_get_current_cgroup_id());
	if (!r)
		return 1;
	struct workload *w = &wl;
	if (r == LOOKUP_GUARDED)
		return refuse_guarded(ctx, w, 0, IPPROTO_UDP);
	return udp(ctx, w, 0);
}

SEC("cgroup/sendmsg6")
int chio_sendmsg6(struct bpf_sock_addr *ctx)
{
	if (agent_socket(ctx))
		return 1;
	struct workload wl;
	int r = lookup_workload(&wl, bpf_get_current_cgroup_id());
	if (!r)
		return 1;
	struct workload *w = &wl;
	if (r == LOOKUP_GUARDED)
		return refuse_guarded(ctx, w, 1, IPPROTO_UDP);
	return udp(ctx, w, 1);
}

SEC("sockops")
int chio_sockops(struct bpf_sock_ops *ctx)
{
	if (ctx->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;

	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct orig_dst *o = bpf_map_lookup_elem(&orig_pending, &cookie);
	if (!o)
		return 1;

	struct tuple_key k = {};
	k.netns_cookie = bpf_get_netns_cookie(ctx);
	// Read every context field unconditionally with volatile 4-byte loads: the
	// verifier refuses a context pointer the compiler has offset differently
	// on two branches, and an 8-byte load merged from two fields.
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
	bpf_map_delete_elem(&orig_pending, &cookie);
	return 1;
}

SEC("cgroup/sock_release")
int chio_sock_release(struct bpf_sock *ctx)
{
	// A socket that never completed its handshake leaves its pending original
	// behind; drop it when the socket goes away.
	__u64 cookie = bpf_get_socket_cookie(ctx);
	bpf_map_delete_elem(&orig_pending, &cookie);
	return 1;
}

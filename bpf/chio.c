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
// UDP: everything from a protected workload is refused except DNS (port 53,
// any address), which goes to the agent's DNS listener (dns.c), and exempt
// destinations, so QUIC cannot go around the TCP path. (A workload without a
// DNS listener may reach the configured resolvers directly instead.)
// Refusals are reported through a ring buffer, rate-limited per workload and
// destination so that a flood cannot flood the receipt log.
//
// Other sockets: a protected workload may create only TCP (or MPTCP) stream
// and UDP datagram sockets in AF_INET/AF_INET6; ping (ICMP), raw, SCTP,
// UDP-Lite and every other kind is refused at socket() (cgroup/sock_create),
// since no connect or sendmsg hook sees what they send.
//
// Accounting: every refusal is counted exactly once, either in an event, in
// the pending count of its entry in `refusals` (reported by a later event or
// taken by the agent through chio_take_refusals), or as lost in
// `refusal_stats`. Nothing is dropped silently.

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
#define SOCK_RAW 3
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_MPTCP 262

char __license[] SEC("license") = "Dual BSD/GPL";

// MAX_CGROUP_LEVEL bounds the ancestor walk; deeper cgroups are matched on
// their first MAX_CGROUP_LEVEL levels only.
#define MAX_CGROUP_LEVEL 16
#define TASK_COMM_LEN 16
#define READ_CTX32(f) (*(volatile __u32 *)&(f))

// One event per workload, protocol and destination per this many ns at most;
// the event carries how many refusals it stands for.
#define EVENT_INTERVAL_NS 1000000000ULL
// An entry of `refusals` with nothing pending and no refusal for this long is
// removed by chio_take_refusals, so that the map holds only live floods.
#define REFUSAL_IDLE_NS EVENT_INTERVAL_NS

enum verdict {
	VERDICT_NONE = 0,
	VERDICT_DENY = 1,   // refuse at connect()/sendmsg(), report an event
	VERDICT_EXEMPT = 2, // pass untouched (operator-configured exemption)
};

enum event_kind {
	EVENT_TCP_DENIED = 1, // refused by the static verdict map
	EVENT_UDP_REFUSED = 2, // UDP from a protected workload, not DNS, not exempt
	EVENT_NO_RECORD = 3,   // the original could not be recorded: refused
	EVENT_SOCKET_REFUSED = 4, // socket() of a kind the datapath does not mediate
	EVENT_PROTO_REFUSED = 5,  // connect()/sendmsg() of such a socket (made before protection)
	EVENT_PORT_ZERO = 6,      // TCP connect() to port 0: no service, refused
	EVENT_GUARDED = 7,        // a guarded cgroup path the agent has not protected yet
	EVENT_INBOUND_REFUSED = 8, // bind()/listen() to receive, refused (inbound.c)
	EVENT_UNCLASSIFIED = 9,   // a cgroup under a birth root the agent has not classified yet
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
	__u16 dns_port4;     // DNS listener port (UDP and TCP) on listen_ip4, network order
	__u16 dns_port6;     // DNS listener port on listen_ip6, network order; both 0:
	                     // no DNS proxy, DNS goes to the resolvers allowlist (dns.c)
};

struct orig_dst {
	__u32 addr[4];     // original destination, v4-mapped for IPv4, network order
	__u16 port;        // original destination port, network order
	__u16 family;      // AF_INET or AF_INET6 of the connecting socket
	__u32 workload_id;
	__u32 pid;         // tgid of the connecting task
	__u32 uid;
	__u64 cgroup_id;   // cgroup of the connecting task
	__u64 reserved;    // zero; was the netns cookie, which nothing read (the
	                   // tuple key has the netns): kept so pinned maps keep their size
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
	__u8 proto;        // IP protocol of the socket (protocol, cut to 8 bits)
	__u8 pad;
	__u32 rule_id;
	__u32 count;       // refusals this event stands for (1 + suppressed)
	__u8 comm[TASK_COMM_LEN];
	__u16 family;      // AF_INET or AF_INET6 of the socket
	__u16 sock_type;   // SOCK_STREAM, SOCK_DGRAM, SOCK_RAW...
	__u16 protocol;    // IP protocol of the socket, as the kernel resolved it
	__u16 pad2;
};

// Referenced so that bpf2go can emit the Go type of ring-buffer records.
const struct event *unused_event __attribute__((unused));

// rate_key names what refusals are aggregated by: everything an event says
// except who made the refusal. EVENT_SOCKET_REFUSED keys have no address.
struct rate_key {
	__u32 workload_id;
	__u32 addr[4];
	__u16 port;
	__u16 protocol;
	__u8 kind;
	__u8 sock_type;
	__u16 family;
	__u32 rule_id;
};

// who made a refusal, for its report.
struct refuser {
	__u64 cgroup_id;
	__u32 pid;
	__u32 uid;
	__u8 comm[TASK_COMM_LEN];
};

// refusal_acc is one key's account, changed only under its lock. An entry
// leaves the map only through chio_take_refusals, which takes what is
// pending and marks it dead under the lock first: a program that looked the
// entry up before it went (or finds it reused for another key) sees that
// and reports by itself, so no count lands where nobody will take it.
struct refusal_acc {
	struct bpf_spin_lock lock;
	__u32 pending;       // refusals not yet in any event
	__u64 last_emit_ns;  // when an event (or a take) last reported this key
	__u64 last_seen_ns;  // the last refusal
	__u32 dead;          // 1: being removed; count elsewhere
	__u32 pad;
	struct refuser last; // the latest refuser, for an aggregated report
	struct rate_key key; // the entry's own key, to tell a reused entry
};

// refusal_stats indexes (per CPU): how refusals were accounted.
enum refusal_stat {
	STAT_REFUSED = 0,    // refusals made (every one, however reported)
	STAT_LOST = 1,       // refusals neither in an event nor kept pending
	STAT_RING_FULL = 2,  // ring reservations that failed (count kept pending unless lost)
	STAT_MAP_FULL = 3,   // refusals map updates that failed (reported alone)
	STAT_MAX = 4,
};

// take_refusals is chio_take_refusals' context: the key to take (in), and
// what was taken (out).
struct take_refusals {
	struct rate_key key; // in
	__u32 final;         // in: 1 takes what is pending now, interval or not, and removes the entry
	__u32 count;         // out: refusals taken
	__u32 removed;       // out: 1 when the entry was removed
	__u32 pad;
	struct refuser last; // out: the latest refuser
};

// Referenced so that bpf2go can emit the Go types.
const struct take_refusals *unused_take __attribute__((unused));
const struct refusal_acc *unused_acc __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);            // cgroup id
	__type(value, struct workload);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} workloads SEC(".maps");

// Pending originals, between connect() and the handshake, by socket cookie:
// the overflow of pending_slots below, for a socket whose slot is taken.
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

// Pending originals, fast path: the slot cookie % PENDING_SLOTS of an array.
// A hash update (bucket lock, element allocation, chain walk) was most of a
// redirected connect4's cost; an array lookup is inlined. A socket claims its
// slot with a compare-and-swap of the slot's cookie (socket cookies are never
// reused while the machine runs, so a slot's cookie names its one owner),
// fills it, and sockops or sock_release frees it. A socket whose slot another
// pending socket holds uses orig_pending instead, so a workload that keeps
// many connects pending cannot make others' fail before orig_pending is full.
#define PENDING_SLOTS 8192

struct pending_slot {
	__u64 cookie;          // the owning socket's cookie; 0: free
	struct orig_dst orig;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PENDING_SLOTS);
	__type(key, __u32);
	__type(value, struct pending_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pending_slots SEC(".maps");

static __always_inline struct pending_slot *pending_slot(__u64 cookie)
{
	__u32 i = (__u32)cookie & (PENDING_SLOTS - 1);
	return bpf_map_lookup_elem(&pending_slots, &i);
}

// claim_slot returns the socket's slot, now its own, or 0 when another
// pending socket holds it.
static __always_inline struct orig_dst *claim_slot(__u64 cookie)
{
	struct pending_slot *s = pending_slot(cookie);
	if (!s)
		return 0;
	__u64 old = __sync_val_compare_and_swap(&s->cookie, 0, cookie);
	if (old != 0 && old != cookie)
		return 0;
	return &s->orig;
}

// owned_slot returns the socket's slot if it holds it. Only the owner's own
// programs ever put its cookie there or take it away, one after the other.
static __always_inline struct pending_slot *owned_slot(__u64 cookie)
{
	struct pending_slot *s = pending_slot(cookie);
	if (s && s->cookie == cookie)
		return s;
	return 0;
}

static __always_inline void free_slot(struct pending_slot *s, __u64 cookie)
{
	__sync_val_compare_and_swap(&s->cookie, cookie, 0);
}

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

// Pending refusals by key. A plain hash, not an LRU: an eviction would drop
// counts. When it is full a refusal is reported alone (and counted).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct rate_key);
	__type(value, struct refusal_acc);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} refusals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} refusal_stats SEC(".maps");

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

// generation[0] is bumped by the agent after each change to workloads,
// guards, birth_roots or birth_exempt.
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
	struct task_struct *group_leader;
	__u64 start_time;
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

// ---- Protected from birth ----------------------------------------------------
//
// A birth root is the cgroup of a subtree whose every cgroup must be
// classified by the agent before it may use the network: protected (in
// `workloads`) or exempt (in `birth_exempt`). A cgroup strictly below a birth
// root that is neither, and has no exempt ancestor at or below the (deepest)
// birth root above it, is unclassified: its socket(), connect() and sendmsg()
// on inet sockets are refused (EPERM) and reported as EVENT_UNCLASSIFIED,
// until the agent classifies it. Cgroups are named by id, so a directory
// removed and made again is a new, unclassified cgroup. The walk runs only on
// a cache miss in lookup_workload, for cgroups no workload protects: a
// classified cgroup's connect pays nothing for it.

// birth_exempt values.
#define BIRTH_EXEMPT 1 // the cgroup and its descendants are classified exempt

// EVENT_UNCLASSIFIED events' rule_id: which call was refused.
enum unclassified_op {
	UNCLASSIFIED_OP_SOCKET = 1,  // socket(): the event has no destination
	UNCLASSIFIED_OP_CONNECT = 2, // connect()
	UNCLASSIFIED_OP_SENDMSG = 3, // sendmsg() (UDP)
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);            // cgroup id of a subtree root
	__type(value, __u32);          // 1
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} birth_roots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);            // cgroup id
	__type(value, __u32);          // BIRTH_*
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} birth_exempt SEC(".maps");

// birth_count[0] is the number of entries in birth_roots, kept by the agent:
// with none, socket() of a TCP or UDP socket returns before any lookup, as
// it did before birth roots existed.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} birth_count SEC(".maps");

static __always_inline int birth_active(void)
{
	__u32 zero = 0;
	__u32 *n = bpf_map_lookup_elem(&birth_count, &zero);
	return n && *n;
}

// unclassified says whether the current task's cgroup (cgid) is below a
// birth root with no exempt cgroup on its path at or below that root. The
// walk goes from the cgroup2 root down: a root seen makes the path
// unclassified, an exempt cgroup at the same level or deeper classifies it
// again. A cgroup deeper than MAX_CGROUP_LEVEL is judged on its first levels,
// which refuses it if its exemption lies deeper (fail closed).
static __always_inline int unclassified(__u64 cgid)
{
	int born = 0;
	for (int level = 0; level < MAX_CGROUP_LEVEL; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (id == 0)
			break;
		if (id != cgid && bpf_map_lookup_elem(&birth_roots, &id))
			born = 1;
		__u32 *x = bpf_map_lookup_elem(&birth_exempt, &id);
		if (x && (*x & BIRTH_EXEMPT))
			born = 0;
	}
	return born;
}

// Sockets carrying this mark belong to the agent and are never touched, so the
// proxy's own upstream dials cannot loop back into it. 0 disables the check.
volatile const __u32 agent_mark = 0;

// agent_tgid, when not 0, is the agent's process id (in the initial pid
// namespace): the mark is honoured only on its sockets. Setting SO_MARK
// takes CAP_NET_ADMIN or CAP_NET_RAW (Linux 5.17+), and container runtimes
// grant CAP_NET_RAW by default; without this check such a workload could put
// the agent's mark on its own sockets and pass undecided.
volatile const __u32 agent_tgid = 0;

// agent_start, when not 0, is the agent's start time (its thread-group
// leader's task_struct.start_time, ns of CLOCK_MONOTONIC): with agent_tgid it
// names the agent's process, not a process id. The programs stay attached
// when the agent dies, and its id can then be given to a workload's process
// (pid_max wraps; a root-owned ns_last_pid picks it): that process is not the
// agent, and its marked sockets are decided like any other.
volatile const __u64 agent_start = 0;

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
#define LOOKUP_UNCLASSIFIED 3 // below a birth root, not classified: refuse (out->id is 0)

// lookup_workload is walk_workload through a per-cgroup cache: one lookup
// instead of one per level for every connect. An entry is valid only for
// the generation it was made in; the agent bumps the generation after every
// change to the maps the walk reads (workloads, guards, birth_roots,
// birth_exempt), so a stale answer is never used (an entry
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
	} else if (!w && unclassified(cgid)) {
		v.found = LOOKUP_UNCLASSIFIED; // v.w is all zero: no workload
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
	if (agent_mark == 0 || sk->mark != agent_mark)
		return 0;
	if (agent_tgid == 0)
		return 1;
	if ((__u32)(bpf_get_current_pid_tgid() >> 32) != agent_tgid)
		return 0;
	if (agent_start == 0)
		return 1;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, group_leader, start_time) == agent_start;
}

// copy_addr copies a v4-mapped/IPv6 address between the keys, values and
// events that carry one.
static __always_inline void copy_addr(__u32 dst[4], const __u32 src[4])
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

// v4_mapped writes the IPv4 address ip4 (network order) as ::ffff:ip4, the
// form every map and event here keeps addresses in.
static __always_inline void v4_mapped(__u32 addr[4], __u32 ip4)
{
	addr[0] = 0;
	addr[1] = 0;
	addr[2] = bpf_htonl(0x0000ffff);
	addr[3] = ip4;
}

// dst_addr reads the destination of ctx as a v4-mapped/IPv6 address.
static __always_inline void dst_addr(struct bpf_sock_addr *ctx, int v6, __u32 addr[4])
{
	if (!v6) {
		v4_mapped(addr, ctx->user_ip4);
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
	copy_addr(k.addr, addr);
	struct verdict_val *v = bpf_map_lookup_elem(&verdicts, &k);
	if (v)
		return v;
	k.port = 0;
	return bpf_map_lookup_elem(&verdicts, &k);
}

static __always_inline void count_stat(__u32 stat, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&refusal_stats, &stat);
	if (v)
		__sync_fetch_and_add(v, n);
}

static __always_inline void current_refuser(struct refuser *r)
{
	r->cgroup_id = bpf_get_current_cgroup_id();
	r->pid = bpf_get_current_pid_tgid() >> 32;
	r->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(&r->comm, sizeof(r->comm));
}

static __always_inline int same_key(const struct rate_key *a, const struct rate_key *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
#pragma unroll
	for (int i = 0; i < sizeof(*a) / 4; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

// emit puts one event for key on the ring; 0 when the ring is full.
static __always_inline int emit(const struct rate_key *k, const struct refuser *r, __u32 count)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->cgroup_id = r->cgroup_id;
	e->kind = k->kind;
	e->workload_id = k->workload_id;
	e->pid = r->pid;
	e->uid = r->uid;
	copy_addr(e->addr, k->addr);
	e->port = k->port;
	e->proto = (__u8)k->protocol;
	e->pad = 0;
	e->rule_id = k->rule_id;
	e->count = count;
	__builtin_memcpy(e->comm, r->comm, sizeof(e->comm));
	e->family = k->family;
	e->sock_type = k->sock_type;
	e->protocol = k->protocol;
	e->pad2 = 0;
	bpf_ringbuf_submit(e, 0);
	return 1;
}

// keep adds count to key's pending refusals, for the next event or take to
// report; 0 when the entry is gone (or going).
static __always_inline int keep(const struct rate_key *k, __u32 count)
{
	struct refusal_acc *a = bpf_map_lookup_elem(&refusals, k);
	if (!a)
		return 0;
	int kept = 0;
	bpf_spin_lock(&a->lock);
	if (!a->dead && same_key(&a->key, k)) {
		a->pending += count;
		kept = 1;
	}
	bpf_spin_unlock(&a->lock);
	return kept;
}

// report_refusal accounts for one refusal: it joins its key's pending count
// while the key had an event within EVENT_INTERVAL_NS, else goes out in an
// event with what was pending. An event the ring has no room for goes back
// to pending (the agent takes it); only what can be neither is lost, and
// counted.
static __always_inline void report_refusal(const struct rate_key *k)
{
	struct refuser r;
	current_refuser(&r);
	__u64 now = bpf_ktime_get_ns();
	count_stat(STAT_REFUSED, 1);

	__u32 count = 1;
	int have = 0; // 1: k has a live entry, which this refusal's count belongs to
	struct refusal_acc *a = bpf_map_lookup_elem(&refusals, k);
	if (a) {
		int suppressed = 0;
		bpf_spin_lock(&a->lock);
		if (!a->dead && same_key(&a->key, k)) {
			have = 1;
			a->last_seen_ns = now;
			a->last = r;
			if (now - a->last_emit_ns < EVENT_INTERVAL_NS) {
				a->pending++;
				suppressed = 1;
			} else {
				count += a->pending;
				a->pending = 0;
				a->last_emit_ns = now;
			}
		}
		bpf_spin_unlock(&a->lock);
		if (suppressed)
			return;
	} else {
		struct refusal_acc nv = {};
		nv.last_emit_ns = now;
		nv.last_seen_ns = now;
		nv.last = r;
		nv.key = *k;
		if (bpf_map_update_elem(&refusals, k, &nv, BPF_NOEXIST) == 0)
			have = 1;
		else
			count_stat(STAT_MAP_FULL, 1); // (or a racing insert): report alone
	}
	if (emit(k, &r, count))
		return;
	count_stat(STAT_RING_FULL, 1);
	if (have && keep(k, count))
		return;
	count_stat(STAT_LOST, count);
}

static __always_inline void report(__u32 kind, struct workload *w, __u8 proto, __u16 port,
				   __u32 addr[4], __u32 rule_id, int v6)
{
	struct rate_key k = {};
	k.workload_id = w->id;
	copy_addr(k.addr, addr);
	k.port = port;
	k.protocol = proto;
	k.kind = kind;
	k.family = v6 ? AF_INET6 : AF_INET;
	k.sock_type = proto == IPPROTO_UDP ? SOCK_DGRAM : SOCK_STREAM;
	k.rule_id = rule_id;
	report_refusal(&k);
}

static __always_inline int is_resolver(__u32 addr[4], __u16 port)
{
	struct resolver_key k = {};
	copy_addr(k.addr, addr);
	k.port = port;
	return bpf_map_lookup_elem(&resolvers, &k) != 0;
}

static __always_inline void fill_orig(struct orig_dst *o, __u32 addr[4], __u16 port, int v6,
				      __u32 workload_id, __u64 cgid);

// DNS: protected workloads' port 53 to the agent's DNS listeners. Its own
// file for reading, compiled here so that it shares the maps and helpers above.
#include "dns.c"

// udp decides a UDP connect() or sendmsg() of a protected workload.
static __always_inline int udp(struct bpf_sock_addr *ctx, struct workload *w, int v6)
{
	__u32 addr[4];
	dst_addr(ctx, v6, addr);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (dns_proxied(w)) {
		if (port == 53)
			return dns_udp(ctx, w, v6, addr);
	} else if (is_resolver(addr, port)) {
		return 1;
	}
	__u32 rule = 0;
	if (w->flags & WL_HAS_VERDICTS) {
		struct verdict_val *v = lookup_verdict(w->id, IPPROTO_UDP, port, addr);
		if (v && v->verdict == VERDICT_EXEMPT)
			return 1;
		if (v)
			rule = v->rule_id;
	}
	report(EVENT_UDP_REFUSED, w, IPPROTO_UDP, port, addr, rule, v6);
	return 0;
}

// fill_orig writes every field of a redirected connection's original (a
// slot is reused, so nothing may be left from its last owner).
static __always_inline void fill_orig(struct orig_dst *o, __u32 addr[4], __u16 port, int v6,
				      __u32 workload_id, __u64 cgid)
{
	copy_addr(o->addr, addr);
	o->port = port;
	o->family = v6 ? AF_INET6 : AF_INET;
	o->workload_id = workload_id;
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->uid = (__u32)bpf_get_current_uid_gid();
	o->cgroup_id = cgid;
	o->reserved = 0;
	bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

// tcp decides a TCP connect() of a protected workload and redirects it.
static __always_inline int tcp(struct bpf_sock_addr *ctx, struct workload *w, int v6, __u64 cgid)
{
	__u32 addr[4];
	dst_addr(ctx, v6, addr);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	// Port 0 is no service: nothing legitimate connects there, and a
	// receipt still says that it was tried.
	if (port == 0) {
		report(EVENT_PORT_ZERO, w, IPPROTO_TCP, port, addr, 0, v6);
		return 0;
	}

	// DNS over TCP goes to the agent's DNS listener, through the same
	// pending originals as every connection (dns.c); without one, to a
	// configured resolver directly (port 53 only: the lookup is not worth
	// making for every connect).
	__u16 lport4 = w->listen_port4, lport6 = w->listen_port6;
	int dns = port == 53 && dns_proxied(w);
	if (dns) {
		lport4 = w->dns_port4;
		lport6 = w->dns_port6;
	} else if (port == 53 && is_resolver(addr, port)) {
		return 1;
	}
	if (!dns && (w->flags & WL_HAS_VERDICTS)) {
		struct verdict_val *v = lookup_verdict(w->id, IPPROTO_TCP, port, addr);
		if (v && v->verdict == VERDICT_EXEMPT)
			return 1;
		if (v && v->verdict == VERDICT_DENY) {
			report(EVENT_TCP_DENIED, w, IPPROTO_TCP, port, addr, v->rule_id, v6);
			return 0;
		}
	}

	int mapped = addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0x0000ffff);
	if (mapped ? lport4 == 0 : lport6 == 0)
		return 0; // no listener for this family: refuse rather than pass

	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct orig_dst *slot = claim_slot(cookie);
	if (slot) {
		fill_orig(slot, addr, (__u16)ctx->user_port, v6, w->id, cgid);
	} else {
		struct orig_dst o;
		fill_orig(&o, addr, (__u16)ctx->user_port, v6, w->id, cgid);
		if (bpf_map_update_elem(&orig_pending, &cookie, &o, BPF_ANY)) {
			// Cannot record where it wanted to go: refuse, never pass unfiltered.
			report(EVENT_NO_RECORD, w, IPPROTO_TCP, port, addr, 0, v6);
			return 0;
		}
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
		ctx->user_port = (__u32)lport4;
	} else {
		ctx->user_ip6[0] = w->listen_ip6[0];
		ctx->user_ip6[1] = w->listen_ip6[1];
		ctx->user_ip6[2] = w->listen_ip6[2];
		ctx->user_ip6[3] = w->listen_ip6[3];
		ctx->user_port = (__u32)lport6;
	}
	return 1;
}

// refuse_guarded refuses a connect or send from a guarded cgroup path that
// the agent has not protected yet, and reports it.
static __always_inline int refuse_guarded(struct bpf_sock_addr *ctx, struct workload *w, int v6, __u8 proto)
{
	__u32 addr[4];
	dst_addr(ctx, v6, addr);
	report(EVENT_GUARDED, w, proto, bpf_ntohs((__u16)ctx->user_port), addr, 0, v6);
	return 0;
}

// refuse_unclassified refuses a connect or send from a cgroup below a birth
// root that the agent has not classified yet, and reports it (no workload:
// the event's cgroup id names the cgroup, its rule_id the call).
static __always_inline int refuse_unclassified(struct bpf_sock_addr *ctx, int v6, __u32 type,
					       __u32 protocol, __u32 op)
{
	struct rate_key k = {};
	dst_addr(ctx, v6, k.addr);
	k.port = bpf_ntohs((__u16)ctx->user_port);
	k.protocol = protocol;
	k.kind = EVENT_UNCLASSIFIED;
	k.sock_type = type;
	k.family = v6 ? AF_INET6 : AF_INET;
	k.rule_id = op;
	report_refusal(&k);
	return 0;
}

// mediated says whether the connect and sendmsg hooks see everything a
// socket of this type and protocol sends: TCP (and MPTCP, whose subflows are
// TCP) streams and UDP datagrams. A protected workload gets no other socket.
static __always_inline int mediated(__u32 type, __u32 protocol)
{
	if (type == SOCK_STREAM)
		return protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP;
	return type == SOCK_DGRAM && protocol == IPPROTO_UDP;
}

// refuse_socket reports the refusal of a socket that is not mediated, at
// socket() (no destination) or at connect() (one made before its workload
// was protected, or passed in from outside).
static __always_inline int refuse_socket(struct workload *w, __u32 kind, __u32 family, __u32 type,
					 __u32 protocol, __u32 addr[4], __u16 port)
{
	struct rate_key k = {};
	k.workload_id = w->id;
	k.kind = kind;
	k.family = family;
	k.sock_type = type;
	k.protocol = protocol;
	if (addr)
		copy_addr(k.addr, addr);
	k.port = port;
	report_refusal(&k);
	return 0;
}

static __always_inline int decide(struct bpf_sock_addr *ctx, int v6)
{
	if (agent_socket(ctx))
		return 1;
	__u32 type = ctx->type;
	__u32 protocol = ctx->protocol;
	struct workload wl;
	__u64 cgid = bpf_get_current_cgroup_id();
	int r = lookup_workload(&wl, cgid);
	if (!r)
		return 1;
	struct workload *w = &wl;
	if (r == LOOKUP_GUARDED)
		return refuse_guarded(ctx, w, v6, type == SOCK_DGRAM ? IPPROTO_UDP : IPPROTO_TCP);
	if (r == LOOKUP_UNCLASSIFIED)
		return refuse_unclassified(ctx, v6, type, protocol, UNCLASSIFIED_OP_CONNECT);
	if (!mediated(type, protocol)) {
		__u32 addr[4];
		dst_addr(ctx, v6, addr);
		return refuse_socket(w, EVENT_PROTO_REFUSED, v6 ? AF_INET6 : AF_INET, type, protocol,
				     addr, bpf_ntohs((__u16)ctx->user_port));
	}
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

// decide_sendmsg decides a UDP sendmsg() (connect() is decide's): the same
// program for both families, as connect4/6 are.
static __always_inline int decide_sendmsg(struct bpf_sock_addr *ctx, int v6)
{
	if (agent_socket(ctx))
		return 1;
	struct workload wl;
	int r = lookup_workload(&wl, bpf_get_current_cgroup_id());
	if (!r)
		return 1;
	struct workload *w = &wl;
	if (r == LOOKUP_GUARDED)
		return refuse_guarded(ctx, w, v6, IPPROTO_UDP);
	if (r == LOOKUP_UNCLASSIFIED)
		return refuse_unclassified(ctx, v6, SOCK_DGRAM, ctx->protocol, UNCLASSIFIED_OP_SENDMSG);
	if (ctx->protocol != IPPROTO_UDP) {
		__u32 addr[4];
		dst_addr(ctx, v6, addr);
		return refuse_socket(w, EVENT_PROTO_REFUSED, v6 ? AF_INET6 : AF_INET, SOCK_DGRAM,
				     ctx->protocol, addr, bpf_ntohs((__u16)ctx->user_port));
	}
	return udp(ctx, w, v6);
}

SEC("cgroup/sendmsg4")
int chio_sendmsg4(struct bpf_sock_addr *ctx)
{
	return decide_sendmsg(ctx, 0);
}

SEC("cgroup/sendmsg6")
int chio_sendmsg6(struct bpf_sock_addr *ctx)
{
	return decide_sendmsg(ctx, 1);
}

// sockops_local_addr reads the local address of a sockops program's socket
// into addr, which must be zeroed, as a v4-mapped/IPv6 address and returns
// the socket's family (an IPv4 address leaves addr[0] and addr[1] as they
// are, which keeps the compiler from turning the two branches into selects).
// Every context
// field is read unconditionally with volatile 4-byte loads: the verifier
// refuses a context pointer the compiler has offset differently on two
// branches, and an 8-byte load merged from two fields.
static __always_inline __u32 sockops_local_addr(struct bpf_sock_ops *ctx, __u32 addr[4])
{
	__u32 family = READ_CTX32(ctx->family);
	__u32 ip4 = READ_CTX32(ctx->local_ip4);
	__u32 ip6_0 = READ_CTX32(ctx->local_ip6[0]), ip6_1 = READ_CTX32(ctx->local_ip6[1]);
	__u32 ip6_2 = READ_CTX32(ctx->local_ip6[2]), ip6_3 = READ_CTX32(ctx->local_ip6[3]);
	if (family == AF_INET) {
		addr[2] = bpf_htonl(0x0000ffff);
		addr[3] = ip4;
	} else {
		addr[0] = ip6_0;
		addr[1] = ip6_1;
		addr[2] = ip6_2;
		addr[3] = ip6_3;
	}
	return family;
}

SEC("sockops")
int chio_sockops(struct bpf_sock_ops *ctx)
{
	if (ctx->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;

	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct pending_slot *s = owned_slot(cookie);
	struct orig_dst *o = s ? &s->orig : bpf_map_lookup_elem(&orig_pending, &cookie);
	if (!o)
		return 1;

	struct tuple_key k = {};
	k.netns_cookie = bpf_get_netns_cookie(ctx);
	sockops_local_addr(ctx, k.addr);
	k.port = (__u16)READ_CTX32(ctx->local_port);
	bpf_map_update_elem(&orig_by_tuple, &k, o, BPF_ANY);
	if (s)
		free_slot(s, cookie);
	else
		bpf_map_delete_elem(&orig_pending, &cookie);
	return 1;
}

SEC("cgroup/sock_release")
int chio_sock_release(struct bpf_sock *ctx)
{
	// A socket that never completed its handshake leaves its pending original
	// behind; drop it when the socket goes away.
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct pending_slot *s = owned_slot(cookie);
	if (s)
		free_slot(s, cookie);
	bpf_map_delete_elem(&orig_pending, &cookie);
	dns_release(cookie);
	return 1;
}

// chio_sock_create refuses, for protected workloads, every AF_INET/AF_INET6
// socket the other hooks do not mediate: ping (ICMP) sockets, raw sockets of
// any protocol, SCTP, UDP-Lite... (sock_create sees only these two
// families; AF_PACKET needs CAP_NET_RAW, which protected workloads must not
// hold.)
//
// A cgroup below a birth root that the agent has not classified gets no inet
// socket at all, TCP and UDP included: the strictest choice, so that nothing
// made before classification (a listener, a connected socket passed on)
// outlives it. Classified cgroups pay one cached lookup per TCP or UDP
// socket(), and nothing while no birth root is set.
SEC("cgroup/sock_create")
int chio_sock_create(struct bpf_sock *ctx)
{
	__u32 family = ctx->family;
	__u32 type = ctx->type;
	__u32 protocol = ctx->protocol;
	if (mediated(type, protocol) && !birth_active())
		return 1;
	struct workload wl;
	int r = lookup_workload(&wl, bpf_get_current_cgroup_id());
	if (r == LOOKUP_UNCLASSIFIED) {
		struct rate_key k = {};
		k.kind = EVENT_UNCLASSIFIED;
		k.family = family;
		k.sock_type = type;
		k.protocol = protocol;
		k.rule_id = UNCLASSIFIED_OP_SOCKET;
		report_refusal(&k);
		return 0;
	}
	if (!r || mediated(type, protocol))
		return 1;
	return refuse_socket(&wl, EVENT_SOCKET_REFUSED, family, type, protocol, 0, 0);
}

// chio_take_refusals is run by the agent (BPF_PROG_RUN) for each key of
// `refusals`: it takes the key's pending count once its interval has passed
// (at once with final), and removes an entry with nothing pending that has
// been idle, so that counts are reported even when no later refusal comes.
// Taking under the entry's lock is what keeps the accounting exact.
SEC("syscall")
int chio_take_refusals(struct take_refusals *ctx)
{
	struct rate_key k = ctx->key;
	__u32 final = ctx->final;
	ctx->count = 0;
	ctx->removed = 0;
	struct refusal_acc *a = bpf_map_lookup_elem(&refusals, &k);
	if (!a)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u32 count = 0;
	int remove = 0;
	struct refuser last = {};
	bpf_spin_lock(&a->lock);
	if (!a->dead && same_key(&a->key, &k)) {
		if (a->pending && (final || now - a->last_emit_ns >= EVENT_INTERVAL_NS)) {
			count = a->pending;
			a->pending = 0;
			a->last_emit_ns = now;
			last = a->last;
		}
		if (!a->pending && (final || now - a->last_seen_ns >= REFUSAL_IDLE_NS)) {
			a->dead = 1;
			remove = 1;
		}
	}
	bpf_spin_unlock(&a->lock);
	if (remove)
		bpf_map_delete_elem(&refusals, &k);
	ctx->count = count;
	ctx->removed = remove;
	ctx->last = last;
	return 0;
}

// Inbound: refusing what a protected workload would receive. Its own file
// for reading, compiled into this object so that it shares every map above.
#include "inbound.c"

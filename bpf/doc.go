// Package bpf holds chio-agent's eBPF programs (C in chio.c, compiled by bpf2go
// into the committed chio_bpfel.{go,o}) and the small typed surface the agent
// uses: load, attach to a cgroup, protect a workload, recover an original
// destination.
//
// The programs attach once at a cgroup that contains every workload. connect4
// and connect6 rewrite a protected TCP connect() to the workload's listener and
// remember the original destination under the socket cookie; sockops re-keys
// it by the client side of the established connection, which is what the
// proxy sees as its peer; sock_release drops the entries of sockets that never
// connected. sendmsg4/6 (and connect on UDP sockets) refuse
// protected UDP except DNS, which goes to the agent's DNS listener with
// the original kept per socket (DNSOriginal), and recvmsg4/6 give the
// answers the resolver's address back (dns.c); without a DNS listener,
// DNS to the resolvers passes untouched. sock_create refuses every other
// AF_INET/AF_INET6 socket (ping, raw, SCTP, UDP-Lite...) for protected
// workloads, since no connect or sendmsg hook sees what those send.
//
// Below a birth root (birth.go), a cgroup the agent has neither protected nor
// exempted gets no inet socket, connect or send at all (EventUnclassified),
// so a pod is never on the network before it is classified.
//
// Every refusal is accounted for exactly once (RefusalStats): reported in an
// event (rate-limited per key to one a second, carrying a count), kept
// pending in the refusals map for a later event or TakeRefusals, or counted
// as lost. bpf2go's generated names stay unexported.
package bpf

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
// protected UDP except DNS to the resolvers. bpf2go's generated names stay
// unexported.
package bpf

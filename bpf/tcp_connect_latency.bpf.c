// SPDX-License-Identifier: GPL-2.0
/* TCP connect latency: one record per connect that reaches ESTABLISHED; and failed
 * connects, counted in the kernel by cgroup and errno.
 *
 * sock:inet_sock_set_state fires for CLOSE -> SYN_SENT in the connecting task (so
 * the cgroup id there is the caller's) and for SYN_SENT -> ESTABLISHED in softirq
 * context (where `current` is arbitrary), so the start time and cgroup id are kept
 * per socket between the two. A connect that fails (SYN_SENT -> CLOSE), blocking or
 * not, leaves its reason in sk_err (ECONNREFUSED on a reset, ETIMEDOUT when the SYNs
 * went unanswered, EHOSTUNREACH... from ICMP); one closed by its caller before it
 * completed has none and is not an error.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"
#include "output.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

struct connect_start {
	__u64 ts_ns;
	__u64 cgroup_id;
	__u32 pid;
	__u32 _pad; /* named, so the initializer zeroes it (the verifier reads it) */
};

/* Layout read by userspace (see the default config); keep the two in step. */
struct tcp_connect_record {
	__u64 cgroup_id;
	__u64 latency_ns;
	__u16 family;
	/* First bytes of the destination address, network order. */
	__u8 subnet[2];
	/* The connecting process: attributes the record on hosts whose containers live
	 * only in cgroup v1 hierarchies (where cgroup_id is the v2 root's). */
	__u32 pid;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, const void *);
	__type(value, struct connect_start);
} connect_starts SEC(".maps");

struct connect_error_key {
	__u64 cgroup;
	__u64 errno;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct connect_error_key);
	__type(value, __u64);
} tcp_connect_errors_total SEC(".maps");

/* Batched: staged per CPU, so a node connecting on many CPUs at once does not queue on
 * one ring's lock (a quiet CPU's records are flushed by the exporter's timer). */
OUTPUT_RINGBUF_BATCHED(events);

/* raw_tp, not tracepoint/: attaching it needs no perf event, which Debian's and Ubuntu's
 * kernels refuse without CAP_SYS_ADMIN. The arguments (sock, old state, new state) are
 * the same on every kernel; the rest is read from the socket as the tracepoint does. */
SEC("raw_tp/inet_sock_set_state")
int tcp_connect_state(struct bpf_raw_tracepoint_args *ctx)
{
	const struct sock *sk = (const struct sock *)ctx->args[0];
	int oldstate = ctx->args[1];
	int newstate = ctx->args[2];

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;

	if (newstate == TCP_SYN_SENT) {
		struct connect_start start = {
			.ts_ns = bpf_ktime_get_ns(),
			.cgroup_id = bpf_get_current_cgroup_id(),
			.pid = bpf_get_current_pid_tgid() >> 32,
		};
		bpf_map_update_elem(&connect_starts, &sk, &start, BPF_ANY);
		return 0;
	}
	if (oldstate != TCP_SYN_SENT)
		return 0;

	struct connect_start *start = bpf_map_lookup_elem(&connect_starts, &sk);
	if (!start)
		return 0;
	if (newstate == TCP_ESTABLISHED) {
		struct tcp_connect_record *rec = OUTPUT_RESERVE(events, sizeof(*rec));
		if (rec) {
			__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

			rec->cgroup_id = start->cgroup_id;
			rec->latency_ns = bpf_ktime_get_ns() - start->ts_ns;
			rec->family = family;
			if (family == AF_INET6)
				bpf_core_read(rec->subnet, sizeof(rec->subnet), &sk->__sk_common.skc_v6_daddr);
			else
				bpf_core_read(rec->subnet, sizeof(rec->subnet), &sk->__sk_common.skc_daddr);
			rec->pid = start->pid;
			OUTPUT_SUBMIT(ctx, events, rec);
		}
	} else if (newstate == TCP_CLOSE) {
		struct connect_error_key key = {
			.cgroup = start->cgroup_id,
			.errno = BPF_CORE_READ((struct sock *)sk, sk_err),
		};

		if (key.errno)
			map_increment(&tcp_connect_errors_total, &key, 1);
	}
	/* Established or failed: either way the connect is over. */
	bpf_map_delete_elem(&connect_starts, &sk);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

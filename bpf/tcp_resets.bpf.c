// SPDX-License-Identifier: GPL-2.0
/* TCP resets per cgroup and direction, counted in the kernel (resets are rare next to
 * packets; a burst of them is what this metric exists to show). Both hooks can fire in
 * softirq context, so the count goes to the socket's cgroup, never `current`'s. A reset
 * sent for a segment no socket owns (a connect to a closed port) has no socket: it is
 * counted under cgroup 0, which exports with empty pod labels. Kernels before 6.10
 * trace only resets sent by a socket, not those answering segments to closed ports:
 * there fentry programs on tcp_v4/v6_send_reset count those (optional programs: skipped
 * where the kernel has no BPF trampolines, and idle from 6.10, where the tracepoint sees
 * them). fentry rather than kprobe: attaching it needs no perf event, which Debian's and
 * Ubuntu's kernels refuse without CAP_SYS_ADMIN. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "cgroup.bpf.h"
#include "maps.bpf.h"

#define RESET_SENT 0
#define RESET_RECEIVED 1

struct reset_key {
	__u64 cgroup;
	__u64 direction;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct reset_key);
	__type(value, __u64);
} tcp_resets_total SEC(".maps");

static __always_inline int count_reset(const struct sock *sk, __u64 direction)
{
	struct reset_key key = { .cgroup = sock_cgroup_id(sk), .direction = direction };

	map_increment(&tcp_resets_total, &key, 1);
	return 0;
}

/* raw_tp: the first argument (the socket) is the same on every kernel, while the
 * tracepoints' formats changed (6.10 gave tcp_send_reset a format of its own). */
SEC("raw_tp/tcp_send_reset")
int tcp_send_reset(struct bpf_raw_tracepoint_args *ctx)
{
	return count_reset((const struct sock *)ctx->args[0], RESET_SENT);
}

SEC("raw_tp/tcp_receive_reset")
int tcp_receive_reset(struct bpf_raw_tracepoint_args *ctx)
{
	return count_reset((const struct sock *)ctx->args[0], RESET_RECEIVED);
}

extern int LINUX_KERNEL_VERSION __kconfig;

static __always_inline int closed_port_reset(const struct sock *sk)
{
	if (LINUX_KERNEL_VERSION >= KERNEL_VERSION(6, 10, 0) || sk)
		return 0;
	return count_reset(sk, RESET_SENT);
}

SEC("fentry/tcp_v4_send_reset")
int BPF_PROG(tcp_v4_send_reset_fentry, const struct sock *sk)
{
	return closed_port_reset(sk);
}

SEC("fentry/tcp_v6_send_reset")
int BPF_PROG(tcp_v6_send_reset_fentry, const struct sock *sk)
{
	return closed_port_reset(sk);
}

char LICENSE[] SEC("license") = "GPL";

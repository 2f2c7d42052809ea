// SPDX-License-Identifier: GPL-2.0
/* TCP retransmits per cgroup and socket state, counted in the kernel. Retransmits
 * are sent from the retransmit timer and from softirq (fast retransmit on ACKs), where
 * `current` is arbitrary: the count goes to the socket's cgroup. The state tells lost
 * SYNs (SYN_SENT: a connect to something that does not answer) from loss on
 * established connections. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "cgroup.bpf.h"
#include "maps.bpf.h"

struct retransmit_key {
	__u64 cgroup;
	__u64 state;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct retransmit_key);
	__type(value, __u64);
} tcp_retransmits_total SEC(".maps");

/* raw_tp: (sk, skb, ...) on every kernel; the tracepoint's format grew fields. */
SEC("raw_tp/tcp_retransmit_skb")
int tcp_retransmit(struct bpf_raw_tracepoint_args *ctx)
{
	const struct sock *sk = (const struct sock *)ctx->args[0];
	struct retransmit_key key = {
		.cgroup = sock_cgroup_id(sk),
		.state = BPF_CORE_READ(sk, __sk_common.skc_state),
	};

	map_increment(&tcp_retransmits_total, &key, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* UDP datagrams dropped at the receiving socket (receive buffer full, or the socket's
 * memory accounting refused them), per cgroup of the receiving socket, counted in the
 * kernel. The drop happens in softirq, in whichever task sent or received the
 * packet: the count goes to the socket's cgroup, the pod that failed to keep up. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "cgroup.bpf.h"
#include "maps.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, __u64);
} udp_receive_drops_total SEC(".maps");

/* raw_tp: (rc, sk[, skb since 6.10]); the tracepoint's format carries no socket. */
SEC("raw_tp/udp_fail_queue_rcv_skb")
int udp_queue_drop(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 cgroup = sock_cgroup_id((const struct sock *)ctx->args[1]);

	map_increment(&udp_receive_drops_total, &cgroup, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

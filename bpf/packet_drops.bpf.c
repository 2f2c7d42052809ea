// SPDX-License-Identifier: GPL-2.0
/* Packets the kernel dropped, per cgroup and drop reason, counted in the kernel: under
 * a flood or a misrouted service this fires for every packet, so a map update is all
 * it may cost. The pod is the socket's that owned the packet (sending side), else the
 * receiving socket the kernel names (6.11+, rx_sk); a packet no socket claims (to a
 * closed port, martian, failed checksum) counts under cgroup 0, with empty pod labels.
 * The reason is the kernel's enum skb_drop_reason (5.17+), exported by name; before
 * 5.17 it reads `unknown`. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "cgroup.bpf.h"
#include "maps.bpf.h"

/* Not a kernel reason: the kernel has none to give. */
#define REASON_UNKNOWN 0xffffffffULL

struct drop_key {
	__u64 cgroup;
	__u64 reason;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct drop_key);
	__type(value, __u64);
} packet_drops_total SEC(".maps");

/* raw_tp, not tracepoint/: attaching it needs no perf event, which Debian's and Ubuntu's
 * kernels refuse without CAP_SYS_ADMIN. Arguments: skb, location, then reason (5.17+)
 * and rx_sk (6.11+). Where the tracepoint record lacks a field the kernel lacks the
 * argument too, and the read sits in a branch CO-RE turns dead, so the verifier never
 * sees an access past the arguments this kernel passes (which would fail the attach). */
SEC("raw_tp/kfree_skb")
int packet_drop(struct bpf_raw_tracepoint_args *ctx)
{
	struct trace_event_raw_kfree_skb *record = NULL;
	struct drop_key key = { .reason = REASON_UNKNOWN };
	struct sk_buff *skb = (struct sk_buff *)ctx->args[0];

	if (bpf_core_field_exists(record->reason)) {
		key.reason = (__u32)ctx->args[2];
		/* Some kernels (6.0, 6.1) trace frees that were no drop through here. */
		if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) &&
		    key.reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED))
			return 0;
	}
	key.cgroup = sock_cgroup_id(BPF_CORE_READ(skb, sk));
	if (!key.cgroup && bpf_core_field_exists(record->rx_sk))
		key.cgroup = sock_cgroup_id((const struct sock *)ctx->args[3]);
	map_increment(&packet_drops_total, &key, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

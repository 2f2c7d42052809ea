// SPDX-License-Identifier: GPL-2.0
/* Direct reclaim latency per cgroup: how long allocating tasks stalled reclaiming
 * memory themselves, globally (the node is short of memory) or in their memory cgroup
 * (the container is at its limit), as an in-kernel exp2 histogram in nanoseconds.
 * Begin and end fire in the stalled task, so `current` is the one to charge. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "histogram.bpf.h"

/* 2^10 ns (about 1 us) to 2^34 ns (17 s); the sum in key 35. */
#define MIN_BUCKET 10
#define MAX_BUCKET 34

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} reclaim_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct cgroup_bucket_key);
	__type(value, __u64);
} direct_reclaim_latency_seconds SEC(".maps");

static __always_inline int reclaim_begin(void)
{
	__u32 tid = bpf_get_current_pid_tgid();
	__u64 now = bpf_ktime_get_ns();

	bpf_map_update_elem(&reclaim_start, &tid, &now, BPF_ANY);
	return 0;
}

static __always_inline int reclaim_end(void)
{
	__u32 tid = bpf_get_current_pid_tgid();
	__u64 *start = bpf_map_lookup_elem(&reclaim_start, &tid);

	if (!start)
		return 0;
	histogram_observe(&direct_reclaim_latency_seconds, bpf_get_current_cgroup_id(),
			  bpf_ktime_get_ns() - *start, MIN_BUCKET, MAX_BUCKET);
	bpf_map_delete_elem(&reclaim_start, &tid);
	return 0;
}

SEC("raw_tp/mm_vmscan_direct_reclaim_begin")
int direct_reclaim_begin(void *ctx)
{
	return reclaim_begin();
}

SEC("raw_tp/mm_vmscan_direct_reclaim_end")
int direct_reclaim_end(void *ctx)
{
	return reclaim_end();
}

SEC("raw_tp/mm_vmscan_memcg_reclaim_begin")
int memcg_reclaim_begin(void *ctx)
{
	return reclaim_begin();
}

SEC("raw_tp/mm_vmscan_memcg_reclaim_end")
int memcg_reclaim_end(void *ctx)
{
	return reclaim_end();
}

char LICENSE[] SEC("license") = "GPL";

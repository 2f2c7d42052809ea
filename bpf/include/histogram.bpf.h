/* In-kernel exp2 histograms keyed by cgroup, as table histograms read them: bucket i
 * counts values in (2^(i-1), 2^i] (clamped to [min, max]), key max + 1 holds the sum. */
#ifndef KUBE_EBPF_HISTOGRAM_BPF_H
#define KUBE_EBPF_HISTOGRAM_BPF_H

#include "maps.bpf.h"

struct cgroup_bucket_key {
	__u64 cgroup;
	__u64 bucket;
};

/* Counts `value` under `key` (any key layout; `bucket` points at its bucket field). */
static __always_inline void histogram_add(void *map, void *key, __u64 *bucket, __u64 value,
					  __u64 min_bucket, __u64 max_bucket)
{
	__u64 b = log2_ceil(value);

	*bucket = b < min_bucket ? min_bucket : b > max_bucket ? max_bucket : b;
	map_increment(map, key, 1);
	*bucket = max_bucket + 1;
	map_increment(map, key, value);
}

/* The common case: a histogram keyed by cgroup alone. */
static __always_inline void histogram_observe(void *map, __u64 cgroup, __u64 value,
					      __u64 min_bucket, __u64 max_bucket)
{
	struct cgroup_bucket_key key = { .cgroup = cgroup };

	histogram_add(map, &key, &key.bucket, value, min_bucket, max_bucket);
}

#endif

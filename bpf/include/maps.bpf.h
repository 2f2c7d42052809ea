/* Map helpers shared by programs that count into maps ("tables"). */
#ifndef KUBE_EBPF_MAPS_BPF_H
#define KUBE_EBPF_MAPS_BPF_H

#include <bpf/bpf_helpers.h>

/* Adds `by` to the u64 at `key`, creating it; safe against concurrent CPUs. */
static __always_inline void map_increment(void *map, const void *key, __u64 by)
{
	__u64 *value = bpf_map_lookup_elem(map, key);

	if (!value) {
		__u64 zero = 0;

		/* BPF_NOEXIST: another CPU may have created it meanwhile; then look again. */
		bpf_map_update_elem(map, key, &zero, BPF_NOEXIST);
		value = bpf_map_lookup_elem(map, key);
		if (!value)
			return;
	}
	__sync_fetch_and_add(value, by);
}

/* log2 rounded up, so exp2 bucket i holds values in (2^(i-1), 2^i] as Prometheus
 * `le` buckets expect; 0 and 1 land in bucket 0. */
static __always_inline __u64 log2_ceil(__u64 v)
{
	__u64 r = 0;

	if (v <= 1)
		return 0;
	v -= 1;
#pragma unroll
	for (int shift = 32; shift > 0; shift >>= 1) {
		if (v >> shift) {
			v >>= shift;
			r += shift;
		}
	}
	return r + 1;
}

#endif

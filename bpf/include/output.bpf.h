/* Record output shared by every program: reserve, fill, submit with batched wakeups.
 *
 * A wakeup per record costs about four times the record itself, so records are
 * submitted without one until the ring holds `output_wakeup_bytes` of unread data;
 * userspace also drains on a short timer, so a quiet ring never strands records.
 * A failed reserve (ring full) is counted per CPU in `ringbuf_drops`, which the
 * exporter reads and exports: loss is never silent.
 */
#ifndef KUBE_EBPF_OUTPUT_BPF_H
#define KUBE_EBPF_OUTPUT_BPF_H

#include <bpf/bpf_helpers.h>

/* Set by the loader before load; the default suits the default 4 MiB ring. */
const volatile __u64 output_wakeup_bytes = 1024 * 1024;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ringbuf_drops SEC(".maps");

/* Declares a ring buffer named `name`; the loader may resize it. */
#define OUTPUT_RINGBUF(name)                                                   \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_RINGBUF);                            \
		__uint(max_entries, 4 * 1024 * 1024);                          \
	} name SEC(".maps")

static __always_inline void output_count_drop(void)
{
	__u32 zero = 0;
	__u64 *drops = bpf_map_lookup_elem(&ringbuf_drops, &zero);

	if (drops)
		*drops += 1;
}

/* Reserves a record of `size` bytes in `ring`; NULL (and a counted drop) when full. */
static __always_inline void *output_reserve(void *ring, __u64 size)
{
	void *record = bpf_ringbuf_reserve(ring, size, 0);

	if (!record)
		output_count_drop();
	return record;
}

/* Submits a reserved record, waking the reader only once enough data waits. */
static __always_inline void output_submit(void *ring, void *record)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= output_wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(record, flags);
}

#endif

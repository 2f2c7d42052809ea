/* Record output shared by every program: reserve, fill, submit with batched wakeups.
 *
 * A wakeup per record costs about four times the record itself, so records are
 * submitted without one until the ring holds `output_wakeup_bytes` of unread data;
 * userspace also drains on a short timer, so a quiet ring never strands records.
 * A failed reserve or output (buffer full) is counted per CPU in `ringbuf_drops`,
 * which the exporter reads and exports: loss is never silent.
 *
 * Kernels before 5.8 have no ring buffers: build the object a second time with
 * -DOUTPUT_PERF (as `<name>.perf.bpf.o`) and the same code writes to a perf event array
 * of the same name instead; the exporter picks that build where it must.
 *
 *	struct my_record *r = output_reserve(&events, sizeof(*r));
 *	if (r) {
 *		r->... = ...;
 *		OUTPUT_SUBMIT(ctx, events, r);
 *	}
 */
#ifndef KUBE_EBPF_OUTPUT_BPF_H
#define KUBE_EBPF_OUTPUT_BPF_H

#include <bpf/bpf_helpers.h>

/* Largest record the perf build can stage (the per-CPU scratch buffer). */
#ifndef OUTPUT_MAX_RECORD
#define OUTPUT_MAX_RECORD 512
#endif

/* Set by the loader before load; the default suits the default 4 MiB ring. */
const volatile __u64 output_wakeup_bytes = 1024 * 1024;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ringbuf_drops SEC(".maps");

static __always_inline void output_count_drop(void)
{
	__u32 zero = 0;
	__u64 *drops = bpf_map_lookup_elem(&ringbuf_drops, &zero);

	if (drops)
		*drops += 1;
}

#ifdef OUTPUT_PERF

struct output_scratch {
	__u8 bytes[OUTPUT_MAX_RECORD];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct output_scratch);
} output_scratch SEC(".maps");

/* Declares the output named `name`: here a perf event array (one buffer per CPU). */
#define OUTPUT_RINGBUF(name)                                                   \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);                   \
		__uint(key_size, sizeof(__u32));                               \
		__uint(value_size, sizeof(__u32));                             \
	} name SEC(".maps")

/* A per-CPU scratch record of `size` bytes (the output is written at submit). */
static __always_inline void *output_reserve(void *ring, __u64 size)
{
	__u32 zero = 0;

	if (size > OUTPUT_MAX_RECORD) {
		output_count_drop();
		return NULL;
	}
	return bpf_map_lookup_elem(&output_scratch, &zero);
}

static __always_inline void output_submit_sized(void *ctx, void *ring, void *record, __u64 size)
{
	if (bpf_perf_event_output(ctx, ring, BPF_F_CURRENT_CPU, record, size) < 0)
		output_count_drop();
}

#else

/* Declares the output named `name`: a ring buffer the loader may resize. */
#define OUTPUT_RINGBUF(name)                                                   \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_RINGBUF);                            \
		__uint(max_entries, 4 * 1024 * 1024);                          \
	} name SEC(".maps")

/* Reserves a record of `size` bytes in `ring`; NULL (and a counted drop) when full. */
static __always_inline void *output_reserve(void *ring, __u64 size)
{
	void *record = bpf_ringbuf_reserve(ring, size, 0);

	if (!record)
		output_count_drop();
	return record;
}

/* Submits a reserved record, waking the reader only once enough data waits. */
static __always_inline void output_submit_sized(void *ctx, void *ring, void *record, __u64 size)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= output_wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(record, flags);
}

#endif

/* Submits `record` (a pointer to its struct) reserved from output `name`. */
#define OUTPUT_SUBMIT(ctx, name, record) output_submit_sized(ctx, &name, record, sizeof(*(record)))

#endif

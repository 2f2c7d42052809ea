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
 *	struct my_record *r = OUTPUT_RESERVE(events, sizeof(*r));
 *	if (r) {
 *		r->... = ...;
 *		OUTPUT_SUBMIT(ctx, events, r);	(or OUTPUT_DISCARD(events, r))
 *	}
 *
 * (`output_reserve(&events, size)` reserves from a plain ring given by pointer.)
 *
 * Batched rings (`OUTPUT_RINGBUF_BATCHED(name)`) stage records per CPU and write them
 * to the ring `OUTPUT_BATCH_BYTES` at a time, one ring sample holding many records in
 * the ring's own framing: the ring's lock is taken, and its producer position moved,
 * once a batch instead of once a record (on many CPUs at once, that lock is what a
 * record costs most). The exporter flushes what a CPU has staged on a timer, by running
 * the ring's `<name>__flush` program on that CPU. A CPU's staging slot is taken by an
 * atomic add and a look at the count (BPF_XADD, which every kernel has); a record made
 * while the slot is held (a program interrupted or preempted on its CPU mid-record) is
 * dropped and counted.
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

static __always_inline void output_count_drops(__u64 n)
{
	__u32 zero = 0;
	__u64 *drops = bpf_map_lookup_elem(&ringbuf_drops, &zero);

	if (drops)
		*drops += n;
}

static __always_inline void output_count_drop(void)
{
	output_count_drops(1);
}

/* The reserve and submit of an output `name` that writes one record a sample (the
 * trailing declaration takes the caller's semicolon). */
#define OUTPUT_PLAIN_ACCESS(name)                                              \
	static __always_inline __attribute__((unused)) void *name##__reserve(__u64 size)               \
	{                                                                      \
		return output_reserve(&name, size);                            \
	}                                                                      \
	static __always_inline __attribute__((unused)) void name##__submit(void *ctx, void *record, __u64 size) \
	{                                                                      \
		output_submit_sized(ctx, &name, record, size);                 \
	}                                                                      \
	static __always_inline __attribute__((unused)) void name##__discard(void *record) \
	{                                                                      \
		output_discard(record);                                        \
	}                                                                      \
	static __always_inline void name##__submit(void *ctx, void *record, __u64 size)

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
	} name SEC(".maps");                                                   \
	OUTPUT_PLAIN_ACCESS(name)

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

/* A scratch record needs no giving back. */
static __always_inline void output_discard(void *record)
{
}

/* Perf buffers are per CPU already: a batched output is a plain one here. */
#define OUTPUT_RINGBUF_BATCHED(name) OUTPUT_RINGBUF(name)

#else

/* Declares a ring buffer named `name` the loader may resize. */
#define OUTPUT_RINGBUF_MAP(name)                                               \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_RINGBUF);                            \
		__uint(max_entries, 4 * 1024 * 1024);                          \
	} name SEC(".maps")

/* Declares the output named `name`: a ring buffer, one record a sample. */
#define OUTPUT_RINGBUF(name)                                                   \
	OUTPUT_RINGBUF_MAP(name);                                              \
	OUTPUT_PLAIN_ACCESS(name)

/* Reserves a record of `size` bytes in `ring`; NULL (and a counted drop) when full. */
static __always_inline void *output_reserve(void *ring, __u64 size)
{
	void *record = bpf_ringbuf_reserve(ring, size, 0);

	if (!record)
		output_count_drop();
	return record;
}

/* Wakes the reader only once enough data waits in `ring`. */
static __always_inline __u64 output_wakeup_flags(void *ring)
{
	if (bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= output_wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

/* Submits a reserved record, waking the reader only once enough data waits. */
static __always_inline void output_submit_sized(void *ctx, void *ring, void *record, __u64 size)
{
	bpf_ringbuf_submit(record, output_wakeup_flags(ring));
}

/* Gives a reserved record back unwritten. */
static __always_inline void output_discard(void *record)
{
	bpf_ringbuf_discard(record, 0);
}

/* Bytes a CPU stages for a batched ring before writing them as one sample. */
#ifndef OUTPUT_BATCH_BYTES
#define OUTPUT_BATCH_BYTES 2048
#endif

/* One CPU's staged records of a batched ring. */
struct output_staging {
	__u64 holders;	/* producers and flushes holding or trying to take it */
	__u32 len;	/* bytes staged in data */
	__u32 records;	/* records staged (a failed write drops them all) */
	__u8 data[OUTPUT_BATCH_BYTES];
};

/* Bytes a record of `size` takes staged: the ring's 8-byte header, the record padded to 8. */
#define OUTPUT_FRAME(size) (8 + (((size) + 7) & ~7ULL))

/* Takes this CPU's staging: true when no one else holds it. Only code on this CPU ever
 * touches it (programs run with migration disabled, flushes on the CPU they empty), so
 * one that interrupts or preempts a holder sees a count above 1 and backs off; two
 * that both back off lose a record each, counted, never a slot to each other. The add's
 * result is unused, so it is a plain BPF_XADD: 5.12's fetching atomics are not needed. */
static __always_inline bool output_take(struct output_staging *s)
{
	__sync_fetch_and_add(&s->holders, 1);
	if (*(volatile __u64 *)&s->holders == 1)
		return true;
	__sync_fetch_and_add(&s->holders, -1);
	return false;
}

static __always_inline void output_release(struct output_staging *s)
{
	asm volatile("" ::: "memory");
	__sync_fetch_and_add(&s->holders, -1);
}

/* Writes what `s` holds to `ring` as one sample; its holder calls it. */
static __always_inline void output_write_staged(void *ring, struct output_staging *s, __u64 flags)
{
	__u32 len = s->len;

	if (len == 0 || len > OUTPUT_BATCH_BYTES)
		return;
	if (bpf_ringbuf_output(ring, s->data, len, flags) < 0)
		output_count_drops(s->records);
	s->len = 0;
	s->records = 0;
}

/* A slot of `size` bytes in this CPU's staging of `ring` (writing out what is staged
 * first when it does not fit), held until the submit; NULL (a counted drop) when the
 * slot is held already. */
static __always_inline void *output_stage(void *ring, void *staging, __u64 size)
{
	__u32 zero = 0, len;
	struct output_staging *s;
	__u32 *head;

	s = bpf_map_lookup_elem(staging, &zero);
	if (!s || OUTPUT_FRAME(size) > OUTPUT_BATCH_BYTES || !output_take(s)) {
		output_count_drop();
		return NULL;
	}
	len = s->len;
	if (len > OUTPUT_BATCH_BYTES - OUTPUT_FRAME(size)) {
		output_write_staged(ring, s, output_wakeup_flags(ring));
		len = 0;
	}
	head = (__u32 *)(s->data + len);
	head[0] = size;
	head[1] = 0;
	return s->data + len + 8;
}

/* Commits the record `output_stage` gave and releases the slot. */
static __always_inline void output_staged(void *ctx, void *ring, void *staging, void *record, __u64 size)
{
	__u32 zero = 0;
	struct output_staging *s;

	s = bpf_map_lookup_elem(staging, &zero);
	if (!s)
		return;
	s->len += OUTPUT_FRAME(size);
	s->records += 1;
	output_release(s);
}

/* Releases the slot `output_stage` gave without committing its record. */
static __always_inline void output_unstage(void *staging)
{
	__u32 zero = 0;
	struct output_staging *s = bpf_map_lookup_elem(staging, &zero);

	if (s)
		output_release(s);
}

/* Writes out this CPU's staged records of `ring` unless a producer holds them (it is
 * mid-record: the next flush takes them). The reader drains right after: no wakeup. */
static __always_inline int output_flush(void *ring, void *staging)
{
	__u32 zero = 0;
	struct output_staging *s;

	s = bpf_map_lookup_elem(staging, &zero);
	if (!s || !output_take(s))
		return 0;
	output_write_staged(ring, s, BPF_RB_NO_WAKEUP);
	output_release(s);
	return 0;
}

/* Declares the output named `name`: a ring buffer written a batch of records a sample,
 * each CPU's staging `name__staged`, and `name__flush`, which the exporter runs on a
 * CPU to write out what waits there. Records are reserved with OUTPUT_RESERVE. */
#define OUTPUT_RINGBUF_BATCHED(name)                                           \
	OUTPUT_RINGBUF_MAP(name);                                              \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                       \
		__uint(max_entries, 1);                                        \
		__type(key, __u32);                                            \
		__type(value, struct output_staging);                          \
	} name##__staged SEC(".maps");                                         \
	static __always_inline __attribute__((unused)) void *name##__reserve(__u64 size)               \
	{                                                                      \
		return output_stage(&name, &name##__staged, size);             \
	}                                                                      \
	static __always_inline __attribute__((unused)) void name##__submit(void *ctx, void *record, __u64 size) \
	{                                                                      \
		output_staged(ctx, &name, &name##__staged, record, size);      \
	}                                                                      \
	static __always_inline __attribute__((unused)) void name##__discard(void *record) \
	{                                                                      \
		output_unstage(&name##__staged);                               \
	}                                                                      \
	SEC("raw_tp") int name##__flush(void *ctx)                             \
	{                                                                      \
		return output_flush(&name, &name##__staged);                   \
	}                                                                      \
	int name##__flush(void *ctx)

#endif

/* Reserves a record of `size` bytes from output `name` (plain or batched); NULL (and a
 * counted drop) when it has no room. */
#define OUTPUT_RESERVE(name, size) name##__reserve(size)

/* Submits `record` (a pointer to its struct) reserved from output `name`. */
#define OUTPUT_SUBMIT(ctx, name, record) name##__submit(ctx, record, sizeof(*(record)))

/* Gives back a record reserved from output `name` unwritten. Every reserve ends in a
 * submit or a discard: the verifier holds plain rings to it, but a batched ring's CPU
 * staging left held drops every later record of that CPU. */
#define OUTPUT_DISCARD(name, record) name##__discard(record)

#endif

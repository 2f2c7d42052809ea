/* The load program of tests and benchmarks: every call of a syscall (getpid, or
 * -DSYSCALL=<name>) writes one 16-byte record to ring `events`: the caller's cgroup id
 * and the low 20 bits of the clock. With -DCOUNT_PRODUCED each attempt is also counted
 * per CPU in `produced_total`, to compare what the kernel tried with what was read.
 * With -DIN_KERNEL_HISTOGRAM the same value is counted in the kernel instead, as
 * cloudflare/ebpf_exporter's examples do: hash map `getpid_values` keyed by cgroup id
 * and exp2 bucket, with the sum under bucket 21 (the alternative streaming is measured
 * against). With -DBATCH=<n> records are staged per CPU and written n at a time, one
 * ring sample of n records (a kernel-side cost streaming could trade for latency).
 * With -DSHARDS=<n> (2 or 4) each CPU writes to one of n rings, events0 to events<n-1>
 * (its number modulo n), through array of maps `events`: rings sharded by CPU.
 * With -DBATCHED_OUTPUT ring `events` is output.bpf.h's batched ring (records staged
 * per CPU, flushed by the exporter): the product's way of batching. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "output.bpf.h"
#include "histogram.bpf.h"

#ifndef SYSCALL
#define SYSCALL getpid
#endif
#define STR2(x) #x
#define STR(x) STR2(x)

#ifdef COUNT_PRODUCED
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} produced_total SEC(".maps");
#endif

#ifdef IN_KERNEL_HISTOGRAM
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct cgroup_bucket_key);
	__type(value, __u64);
} getpid_values SEC(".maps");
#elif defined(SHARDS)
struct shard {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
};
struct shard events0 SEC(".maps"), events1 SEC(".maps"), events2 SEC(".maps"), events3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SHARDS);
	__type(key, __u32);
	__array(values, struct shard);
} events SEC(".maps") = {
#if SHARDS == 2
	.values = { &events0, &events1 },
#else
	.values = { &events0, &events1, &events2, &events3 },
#endif
};
#elif defined(BATCHED_OUTPUT)
OUTPUT_RINGBUF_BATCHED(events);
#else
OUTPUT_RINGBUF(events);
#endif

struct record {
	__u64 cgroup, value;
};

#ifdef BATCH
struct staged {
	__u64 n;
	struct record r[BATCH];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct staged);
} staging SEC(".maps");

/* Stages `r` on this CPU; every BATCH records go out as one sample. A tracepoint's
 * program does not nest on its CPU, so the staging slot is this call's alone. */
static __always_inline void stage(struct record r)
{
	__u32 zero = 0;
	struct staged *s = bpf_map_lookup_elem(&staging, &zero);
	__u64 n;

	if (!s)
		return;
	n = s->n;
	if (n >= BATCH)
		n = 0;
	s->r[n] = r;
	if (++n == BATCH) {
		__u64 flags = BPF_RB_NO_WAKEUP;

		if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= output_wakeup_bytes)
			flags = BPF_RB_FORCE_WAKEUP;
		if (bpf_ringbuf_output(&events, s->r, sizeof(s->r), flags) < 0)
			output_count_drop();
		n = 0;
	}
	s->n = n;
}
#endif

SEC("tracepoint/syscalls/sys_enter_" STR(SYSCALL))
int on_call(void *ctx)
{
#ifdef COUNT_PRODUCED
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&produced_total, &zero);

	if (n)
		*n += 1;
#endif
#ifdef IN_KERNEL_HISTOGRAM
	histogram_observe(&getpid_values, bpf_get_current_cgroup_id(),
			  bpf_ktime_get_ns() & 0xfffff, 0, 20);
#elif defined(SHARDS)
	__u32 shard = bpf_get_smp_processor_id() % SHARDS;
	void *ring = bpf_map_lookup_elem(&events, &shard);
	struct record *r;

	if (!ring)
		return 0;
	r = output_reserve(ring, sizeof(*r));
	if (r) {
		r->cgroup = bpf_get_current_cgroup_id();
		r->value = bpf_ktime_get_ns() & 0xfffff;
		output_submit_sized(ctx, ring, r, sizeof(*r));
	}
#elif defined(BATCH)
	stage((struct record){ bpf_get_current_cgroup_id(), bpf_ktime_get_ns() & 0xfffff });
#else
	struct record *r = OUTPUT_RESERVE(events, sizeof(*r));

	if (r) {
		r->cgroup = bpf_get_current_cgroup_id();
		r->value = bpf_ktime_get_ns() & 0xfffff;
		OUTPUT_SUBMIT(ctx, events, r);
	}
#endif
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

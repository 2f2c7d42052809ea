/* The load program of tests and benchmarks: every call of a syscall (getpid, or
 * -DSYSCALL=<name>) writes one 16-byte record to ring `events`: the caller's cgroup id
 * and the low 20 bits of the clock. With -DCOUNT_PRODUCED each attempt is also counted
 * per CPU in `produced_total`, to compare what the kernel tried with what was read.
 * With -DIN_KERNEL_HISTOGRAM the same value is counted in the kernel instead, as
 * cloudflare/ebpf_exporter's examples do: hash map `getpid_values` keyed by cgroup id
 * and exp2 bucket, with the sum under bucket 21 (the alternative streaming is measured
 * against). */
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
#else
OUTPUT_RINGBUF(events);
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
#else
	struct { __u64 cgroup, value; } *r = output_reserve(&events, 16);

	if (r) {
		r->cgroup = bpf_get_current_cgroup_id();
		r->value = bpf_ktime_get_ns() & 0xfffff;
		OUTPUT_SUBMIT(ctx, events, r);
	}
#endif
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

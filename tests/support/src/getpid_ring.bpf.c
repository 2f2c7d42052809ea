/* The load program of tests and benchmarks: every call of a syscall (getpid, or
 * -DSYSCALL=<name>) writes one 16-byte record to ring `events`: the caller's cgroup id
 * and the low 20 bits of the clock. With -DCOUNT_PRODUCED each attempt is also counted
 * per CPU in `produced_total`, to compare what the kernel tried with what was read. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "output.bpf.h"

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

OUTPUT_RINGBUF(events);

SEC("tracepoint/syscalls/sys_enter_" STR(SYSCALL))
int on_call(void *ctx)
{
#ifdef COUNT_PRODUCED
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&produced_total, &zero);

	if (n)
		*n += 1;
#endif
	struct { __u64 cgroup, value; } *r = output_reserve(&events, 16);

	if (r) {
		r->cgroup = bpf_get_current_cgroup_id();
		r->value = bpf_ktime_get_ns() & 0xfffff;
		OUTPUT_SUBMIT(ctx, events, r);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

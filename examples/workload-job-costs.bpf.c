// SPDX-License-Identifier: GPL-2.0
/* A USDT probe's argument as an event-stream histogram: one ring record per firing
 * of the workload's `workload:job` probe (kind, cost), with the caller's cgroup, so
 * user space sees every cost exactly (native histogram buckets come from them). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/usdt.bpf.h>
#include "output.bpf.h"

struct job_record {
	__u64 cgroup_id;
	__u64 cost;
	__u32 kind;
	__u32 pad;
};

OUTPUT_RINGBUF(jobs);

SEC("usdt/kebpf-workload:workload:job")
int BPF_USDT(job, long kind, long cost)
{
	struct job_record *rec = output_reserve(&jobs, sizeof(*rec));

	if (!rec)
		return 0;
	rec->cgroup_id = bpf_get_current_cgroup_id();
	rec->cost = cost;
	rec->kind = kind;
	rec->pad = 0;
	OUTPUT_SUBMIT(ctx, jobs, rec);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

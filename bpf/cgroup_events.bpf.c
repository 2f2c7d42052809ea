// SPDX-License-Identifier: GPL-2.0
/* cgroup v2 directories as they are created and removed, so the enrich stage knows a
 * container's cgroup before its events arrive and after the runtime removes it. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "output.bpf.h"

#define CGROUP_MKDIR 1
#define CGROUP_RMDIR 2

/* Layout read by enrich (ingest::CgroupEvent); keep the two in step. */
struct cgroup_event {
	__u64 id;
	__u32 kind;
	__u32 len;
	char path[384];
};

OUTPUT_RINGBUF(cgroup_events);

static __always_inline int emit(struct trace_event_raw_cgroup *ctx, __u32 kind)
{
	/* Hierarchy 0 is cgroup v2, the one bpf_get_current_cgroup_id() reports. */
	if (ctx->root != 0)
		return 0;
	struct cgroup_event *e = output_reserve(&cgroup_events, sizeof(*e));
	if (!e)
		return 0;
	__u32 offset = ctx->__data_loc_path & 0xffff;
	long n = bpf_probe_read_kernel_str(e->path, sizeof(e->path), (void *)ctx + offset);

	e->id = ctx->id;
	e->kind = kind;
	e->len = n > 0 ? n - 1 : 0;
	OUTPUT_SUBMIT(ctx, cgroup_events, e);
	return 0;
}

SEC("tracepoint/cgroup/cgroup_mkdir")
int cgroup_mkdir(struct trace_event_raw_cgroup *ctx)
{
	return emit(ctx, CGROUP_MKDIR);
}

SEC("tracepoint/cgroup/cgroup_rmdir")
int cgroup_rmdir(struct trace_event_raw_cgroup *ctx)
{
	return emit(ctx, CGROUP_RMDIR);
}

char LICENSE[] SEC("license") = "GPL";

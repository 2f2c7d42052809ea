// SPDX-License-Identifier: GPL-2.0
/* cgroup v2 directories as they are created and removed, so the enrich stage knows a
 * container's cgroup before its events arrive and after the runtime removes it. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "cgroup.bpf.h"
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

/* raw_tp, not tracepoint/: attaching it needs no perf event, which Debian's and Ubuntu's
 * kernels refuse without CAP_SYS_ADMIN. The arguments (cgroup, path) are the same from
 * 5.0 on; the fields are those the tracepoint's record would carry. */
static __always_inline int emit(void *ctx, struct cgroup *cgrp, const char *path, __u32 kind)
{
	/* Hierarchy 0 is cgroup v2, the one bpf_get_current_cgroup_id() reports. */
	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	struct cgroup_event *e = output_reserve(&cgroup_events, sizeof(*e));
	if (!e)
		return 0;
	long n = bpf_probe_read_kernel_str(e->path, sizeof(e->path), path);

	e->id = cgroup_id_of(cgrp);
	e->kind = kind;
	e->len = n > 0 ? n - 1 : 0;
	OUTPUT_SUBMIT(ctx, cgroup_events, e);
	return 0;
}

SEC("raw_tp/cgroup_mkdir")
int cgroup_mkdir(struct bpf_raw_tracepoint_args *ctx)
{
	return emit(ctx, (struct cgroup *)ctx->args[0], (const char *)ctx->args[1], CGROUP_MKDIR);
}

SEC("raw_tp/cgroup_rmdir")
int cgroup_rmdir(struct bpf_raw_tracepoint_args *ctx)
{
	return emit(ctx, (struct cgroup *)ctx->args[0], (const char *)ctx->args[1], CGROUP_RMDIR);
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* Failed openat() calls: one ring record per failure with the errno and cgroup. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "output.bpf.h"

struct open_error {
	__u64 cgroup_id;
	__u32 err;
	__u32 pad;
};

OUTPUT_RINGBUF(open_errors);

SEC("tracepoint/syscalls/sys_exit_openat")
int openat_exit(struct syscall_trace_exit *ctx)
{
	long ret = ctx->ret;

	if (ret >= 0)
		return 0;
	struct open_error *rec = output_reserve(&open_errors, sizeof(*rec));
	if (!rec)
		return 0;
	rec->cgroup_id = bpf_get_current_cgroup_id();
	rec->err = -ret;
	rec->pad = 0;
	OUTPUT_SUBMIT(ctx, open_errors, rec);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

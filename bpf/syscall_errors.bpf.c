// SPDX-License-Identifier: GPL-2.0
/* Failed system calls per cgroup, syscall and errno, counted in the kernel. sys_exit
 * fires on every system call of every process, the hottest hook after sched_switch:
 * successful calls return after one comparison, failed ones cost a map update. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"

struct syscall_error_key {
	__u64 cgroup;
	__u64 syscall;
	__u64 errno;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct syscall_error_key);
	__type(value, __u64);
} syscall_errors_total SEC(".maps");

/* Error returns are -4095..-1 (MAX_ERRNO); other negative values are not errors. */
#define MAX_ERRNO 4095

SEC("raw_tp/sys_exit")
int syscall_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	long ret = ctx->args[1];
	struct syscall_error_key key;

	if (ret >= 0 || ret < -MAX_ERRNO)
		return 0;
	key.cgroup = bpf_get_current_cgroup_id();
#if defined(__TARGET_ARCH_arm64)
	key.syscall = BPF_CORE_READ(regs, syscallno);
#else
	key.syscall = BPF_CORE_READ(regs, orig_ax);
#endif
	key.errno = -ret;
	map_increment(&syscall_errors_total, &key, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

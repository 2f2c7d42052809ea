// SPDX-License-Identifier: GPL-2.0
/* getppid() calls per cgroup in a per-CPU hash map: the config's `cpu` label splits
 * the count by CPU (the reference exporter's per-CPU mode); without it they are summed. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u64);
} getppid_calls_total SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	__u64 cgroup = bpf_get_current_cgroup_id(), one = 1;
	__u64 *n = bpf_map_lookup_elem(&getppid_calls_total, &cgroup);

	/* Per-CPU values: no other CPU writes this one. */
	if (n)
		*n += 1;
	else
		bpf_map_update_elem(&getppid_calls_total, &cgroup, &one, BPF_NOEXIST);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

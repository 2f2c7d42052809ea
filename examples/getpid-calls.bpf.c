// SPDX-License-Identifier: GPL-2.0
/* getpid() calls per cgroup, counted in a map (a "table"); the config turns the
 * cgroup id into pod labels with the kube_* decoders. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "maps.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, __u64);
} getpid_calls_total SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpid")
int count_getpid(void *ctx)
{
	__u64 cgroup = bpf_get_current_cgroup_id();

	map_increment(&getpid_calls_total, &cgroup, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

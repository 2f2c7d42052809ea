// SPDX-License-Identifier: GPL-2.0
/* Forks per cgroup from the BTF-typed sched_process_fork tracepoint, counted in a map. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "maps.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, __u64);
} process_forks_total SEC(".maps");

SEC("tp_btf/sched_process_fork")
int BPF_PROG(count_fork, struct task_struct *parent, struct task_struct *child)
{
	__u64 cgroup = bpf_get_current_cgroup_id();

	map_increment(&process_forks_total, &cgroup, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

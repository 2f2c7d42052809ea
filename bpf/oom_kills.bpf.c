// SPDX-License-Identifier: GPL-2.0
/* OOM kills per cgroup, counted in the kernel: when a process chosen by the OOM killer
 * (global or its memory cgroup's) finally exits, in its own context, so the count
 * lands on the victim's cgroup, not on the task whose allocation triggered the kill.
 * The OOM killer marks the victim's signal struct (signal->oom_mm); the last thread's
 * exit counts it once. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, __u64);
} oom_kills_total SEC(".maps");

SEC("raw_tp/sched_process_exit")
int oom_victim_exit(void *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	__u64 cgroup;

	if (BPF_CORE_READ(task, signal, live.counter) != 0 || !BPF_CORE_READ(task, signal, oom_mm))
		return 0;
	cgroup = bpf_get_current_cgroup_id();
	map_increment(&oom_kills_total, &cgroup, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* Process execs and exits per cgroup, counted in the kernel (both are rare next to
 * the events of a busy node, so a map update each costs nothing that matters). An
 * exit is counted once per process, when its last thread leaves, with its wait status
 * (task->exit_code: exit code << 8, or the terminating signal). LRU maps: on a node
 * that churns through more cgroups than they hold, the oldest entries go first. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"

struct exit_key {
	__u64 cgroup;
	__u64 status;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, __u64);
} process_execs_total SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct exit_key);
	__type(value, __u64);
} process_exits_total SEC(".maps");

SEC("raw_tp/sched_process_exec")
int process_exec(void *ctx)
{
	__u64 cgroup = bpf_get_current_cgroup_id();

	map_increment(&process_execs_total, &cgroup, 1);
	return 0;
}

SEC("raw_tp/sched_process_exit")
int process_exit(void *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct exit_key key = { .cgroup = bpf_get_current_cgroup_id() };

	/* do_exit drops signal->live before this tracepoint: 0 means the last thread. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	key.status = (__u32)BPF_CORE_READ(task, exit_code);
	map_increment(&process_exits_total, &key, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

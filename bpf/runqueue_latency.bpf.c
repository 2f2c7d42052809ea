// SPDX-License-Identifier: GPL-2.0
/* Run-queue latency per cgroup: from the moment a task becomes runnable (woken, new,
 * or preempted while still runnable) to the moment it runs, as an in-kernel exp2
 * histogram in nanoseconds. sched_switch is the hottest hook on a node (every context
 * switch on every CPU), so nothing leaves the kernel per event. The wait belongs to the
 * task that waited: the cgroup is `next`'s, read from its task_struct, not `current`'s
 * (at sched_switch `current` is still `prev`). tp_btf (5.5+) hands the task pointers
 * over without a copy. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "cgroup.bpf.h"
#include "histogram.bpf.h"

#define TASK_RUNNING 0
/* 2^10 ns (about 1 us) to 2^34 ns (17 s); the sum in key 35. */
#define MIN_BUCKET 10
#define MAX_BUCKET 34

/* Before 5.14 task_struct's state was `state`, a long. */
struct task_struct___old {
	long state;
};

/* Runnable since, by thread id. LRU: a thread that exits while runnable leaves its
 * entry behind; the least recently used go first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} runnable_since SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct cgroup_bucket_key);
	__type(value, __u64);
} runqueue_latency_seconds SEC(".maps");

static __always_inline void enqueued(struct task_struct *task)
{
	__u32 tid = BPF_CORE_READ(task, pid);
	__u64 now = bpf_ktime_get_ns();

	/* The idle task (tid 0) is never waiting for a CPU. */
	if (tid)
		bpf_map_update_elem(&runnable_since, &tid, &now, BPF_ANY);
}

static __always_inline long task_state(struct task_struct *task)
{
	if (bpf_core_field_exists(task->__state))
		return BPF_CORE_READ(task, __state);
	return BPF_CORE_READ((struct task_struct___old *)task, state);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(runqueue_wakeup, struct task_struct *task)
{
	enqueued(task);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(runqueue_wakeup_new, struct task_struct *task)
{
	enqueued(task);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(runqueue_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 tid;
	__u64 *since;

	/* Preempted, still runnable: it waits for a CPU from now. */
	if (task_state(prev) == TASK_RUNNING)
		enqueued(prev);
	tid = BPF_CORE_READ(next, pid);
	since = bpf_map_lookup_elem(&runnable_since, &tid);
	if (!since)
		return 0;
	histogram_observe(&runqueue_latency_seconds, task_cgroup_id(next),
			  bpf_ktime_get_ns() - *since, MIN_BUCKET, MAX_BUCKET);
	bpf_map_delete_elem(&runnable_since, &tid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

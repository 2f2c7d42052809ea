// SPDX-License-Identifier: GPL-2.0
/* Scheduler events of a traced application as zero-width spans inside the
 * application's own trace. The application announces the span it is in through USDT
 * probes, as the reference exporter's sched demo does:
 * ebpf_exporter:sched_set_parent_span(trace_id_hi, trace_id_lo, span_id) and
 * ebpf_exporter:sched_clear_parent_span(); until it clears it, its wakeups, migrations
 * and context switches are spans whose parent is that span. Here the application is
 * the test workload, `kebpf-workload` on the exporter's PATH (its traced-sleep). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/usdt.bpf.h>
#include "output.bpf.h"
#include "tracing.bpf.h"

extern int LINUX_KERNEL_VERSION __kconfig;

#define TASK_INTERRUPTIBLE 0x1
#define TASK_UNINTERRUPTIBLE 0x2

enum task_state {
	STATE_PROBABLY_RUNNING,
	STATE_INTERRUPTIBLE,
	STATE_UNINTERRUPTIBLE,
};

struct wakeup_span {
	struct span_base base;
	__u32 tgid;
	__u32 pid;
};

struct migrate_span {
	struct span_base base;
	__u32 tgid;
	__u32 pid;
	__u32 orig_cpu;
	__u32 dest_cpu;
};

struct switch_span {
	struct span_base base;
	__u32 tgid;
	__u32 pid;
	__u32 prev_state;
	__u8 preempt;
	__u8 pad[3];
};

/* The span each traced process is in, by tgid. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, struct span_parent);
} traced_tgids SEC(".maps");

OUTPUT_RINGBUF(sched_wakeup_spans);
OUTPUT_RINGBUF(sched_migrate_spans);
OUTPUT_RINGBUF(sched_switch_spans);

/* Before 5.14 a task's state was `state`; before 5.16 its CPU was the task's own. */
struct task_struct___old {
	long state;
	unsigned int cpu;
};

SEC("usdt/kebpf-workload:ebpf_exporter:sched_set_parent_span")
int BPF_USDT(set_parent_span, __u64 trace_id_hi, __u64 trace_id_lo, __u64 span_id)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct span_parent parent = {
		.trace_id_hi = trace_id_hi,
		.trace_id_lo = trace_id_lo,
		.span_id = span_id,
	};

	bpf_map_update_elem(&traced_tgids, &tgid, &parent, BPF_ANY);
	return 0;
}

SEC("usdt/kebpf-workload:ebpf_exporter:sched_clear_parent_span")
int BPF_USDT(clear_parent_span)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	bpf_map_delete_elem(&traced_tgids, &tgid);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(traced_exits, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);

	if (BPF_CORE_READ(task, pid) == tgid)
		bpf_map_delete_elem(&traced_tgids, &tgid);
	return 0;
}

/* A zero-width span now, child of the task's process's span; NULL when untraced. */
static __always_inline void *reserve(void *ring, __u64 size, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct span_parent *parent = bpf_map_lookup_elem(&traced_tgids, &tgid);
	struct wakeup_span *span;

	if (!parent)
		return NULL;
	span = output_reserve(ring, size);
	if (!span)
		return NULL;
	span->base.parent = *parent;
	span->base.span_id = 0;
	span->base.span_monotonic_timestamp_ns = bpf_ktime_get_ns();
	span->base.span_duration_ns = 0;
	span->tgid = tgid;
	span->pid = BPF_CORE_READ(task, pid);
	return span;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(sched_wakeup, struct task_struct *task)
{
	struct wakeup_span *span = reserve(&sched_wakeup_spans, sizeof(*span), task);

	if (span)
		OUTPUT_SUBMIT(ctx, sched_wakeup_spans, span);
	return 0;
}

SEC("tp_btf/sched_migrate_task")
int BPF_PROG(sched_migrate_task, struct task_struct *task, int dest_cpu)
{
	struct migrate_span *span = reserve(&sched_migrate_spans, sizeof(*span), task);
	struct task_struct___old *old = (void *)task;

	if (!span)
		return 0;
	if (bpf_core_field_exists(old->cpu))
		span->orig_cpu = BPF_CORE_READ(old, cpu);
	else
		span->orig_cpu = BPF_CORE_READ(task, thread_info.cpu);
	span->dest_cpu = dest_cpu;
	OUTPUT_SUBMIT(ctx, sched_migrate_spans, span);
	return 0;
}

/* The state the previous task left the CPU in: the tracepoint's fourth argument from
 * 5.18, the task's own field before (loaded as after_queue_arg does in block.bpf.h,
 * so that the verifier sees a constant offset). */
static __always_inline unsigned int prev_state(unsigned long long *ctx, struct task_struct *prev)
{
	struct task_struct___old *old = (void *)prev;
	__u64 state;

	if (LINUX_KERNEL_VERSION >= KERNEL_VERSION(5, 18, 0)) {
		asm volatile("%[s] = *(u64 *)(%[ctx] + 24)" : [s] "=r"(state) : [ctx] "r"(ctx));
		return state;
	}
	if (bpf_core_field_exists(prev->__state))
		return BPF_CORE_READ(prev, __state);
	return BPF_CORE_READ(old, state);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev)
{
	struct switch_span *span = reserve(&sched_switch_spans, sizeof(*span), prev);
	unsigned int state;

	if (!span)
		return 0;
	state = prev_state(ctx, prev);
	span->prev_state = state & TASK_INTERRUPTIBLE	  ? STATE_INTERRUPTIBLE
			   : state & TASK_UNINTERRUPTIBLE ? STATE_UNINTERRUPTIBLE
							  : STATE_PROBABLY_RUNNING;
	span->preempt = preempt;
	span->pad[0] = span->pad[1] = span->pad[2] = 0;
	OUTPUT_SUBMIT(ctx, sched_switch_spans, span);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

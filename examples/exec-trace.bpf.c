// SPDX-License-Identifier: GPL-2.0
/* Process lifetimes as spans: every program that /bin/bash starts (and what those
 * start in turn) is a span from exec to exit, named after the binary, child of the
 * span of the process that forked it; each /bin/bash exec not under a traced process
 * starts a trace. Records have the reference exporter's exec-trace layout, so its
 * config reads them; with -DEXEC_SPAN_CGROUP they carry the cgroup id too. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "output.bpf.h"
#include "tracing.bpf.h"

#define EXE_LEN 64

struct exec_span {
	struct span_base base;
	char exe[EXE_LEN];
#ifdef EXEC_SPAN_CGROUP
	__u64 cgroup_id;
#endif
};

/* The open span of each traced process, by tgid. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, struct exec_span);
} traced_tgids SEC(".maps");

OUTPUT_RINGBUF(exec_spans);

static __always_inline bool is_bash(const char *path)
{
	static const char bash[] = "/bin/bash";

	for (int i = 0; i < sizeof(bash); i++)
		if (path[i] != bash[i])
			return false;
	return true;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_starts, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 tgid = BPF_CORE_READ(task, tgid);
	__u32 parent_tgid = BPF_CORE_READ(task, real_parent, tgid);
	struct exec_span span = {}, *parent;
	char path[EXE_LEN] = {};

	if (bpf_probe_read_kernel_str(path, sizeof(path), BPF_CORE_READ(bprm, filename)) < 0)
		return 0;
	parent = bpf_map_lookup_elem(&traced_tgids, &parent_tgid);
	if (parent) {
		span.base.parent.trace_id_hi = parent->base.parent.trace_id_hi;
		span.base.parent.trace_id_lo = parent->base.parent.trace_id_lo;
		span.base.parent.span_id = parent->base.span_id;
	} else if (is_bash(path)) {
		span.base.parent.trace_id_lo = now;
	} else {
		return 0;
	}
	span.base.span_id = now;
	span.base.span_monotonic_timestamp_ns = now;
	__builtin_memcpy(span.exe, path, sizeof(span.exe));
#ifdef EXEC_SPAN_CGROUP
	span.cgroup_id = bpf_get_current_cgroup_id();
#endif
	bpf_map_update_elem(&traced_tgids, &tgid, &span, BPF_ANY);
	return 0;
}

/* A forked child of a traced process is traced (its span, if it never execs, is a
 * child of the parent's named like it). */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(exec_forks, struct task_struct *parent, struct task_struct *child)
{
	__u32 parent_tgid = BPF_CORE_READ(parent, tgid), child_tgid = BPF_CORE_READ(child, tgid);
	struct exec_span *span, fork;

	if (parent_tgid == child_tgid)
		return 0;
	span = bpf_map_lookup_elem(&traced_tgids, &parent_tgid);
	if (!span)
		return 0;
	fork = *span;
	fork.base.parent.span_id = span->base.span_id;
	fork.base.span_id = bpf_ktime_get_ns();
	bpf_map_update_elem(&traced_tgids, &child_tgid, &fork, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(exec_ends, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct exec_span *span, *record;

	/* Threads other than the leader end without ending the process's span. */
	if (BPF_CORE_READ(task, pid) != tgid)
		return 0;
	span = bpf_map_lookup_elem(&traced_tgids, &tgid);
	if (!span)
		return 0;
	span->base.span_duration_ns = bpf_ktime_get_ns() - span->base.span_monotonic_timestamp_ns;
	record = output_reserve(&exec_spans, sizeof(*record));
	if (record) {
		*record = *span;
		OUTPUT_SUBMIT(ctx, exec_spans, record);
	}
	bpf_map_delete_elem(&traced_tgids, &tgid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

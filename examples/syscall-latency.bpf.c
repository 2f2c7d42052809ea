// SPDX-License-Identifier: GPL-2.0
/* Syscall latency from raw tracepoints: one ring record per completed syscall with
 * its number, duration and the caller's cgroup. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "output.bpf.h"

struct start {
	__u64 ts_ns;
	__u64 nr;
};

struct syscall_record {
	__u64 cgroup_id;
	__u64 latency_ns;
	__u32 nr;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct start);
} starts SEC(".maps");

OUTPUT_RINGBUF(syscalls);

SEC("raw_tp/sys_enter")
int syscall_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct start s = { .ts_ns = bpf_ktime_get_ns(), .nr = ctx->args[1] };

	bpf_map_update_elem(&starts, &id, &s, BPF_ANY);
	return 0;
}

SEC("raw_tp/sys_exit")
int syscall_exit(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct start *s = bpf_map_lookup_elem(&starts, &id);

	if (!s)
		return 0;
	struct syscall_record *rec = output_reserve(&syscalls, sizeof(*rec));
	if (rec) {
		rec->cgroup_id = bpf_get_current_cgroup_id();
		rec->latency_ns = bpf_ktime_get_ns() - s->ts_ns;
		rec->nr = s->nr;
		rec->pad = 0;
		OUTPUT_SUBMIT(ctx, syscalls, rec);
	}
	bpf_map_delete_elem(&starts, &id);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

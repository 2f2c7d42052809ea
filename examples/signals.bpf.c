// SPDX-License-Identifier: GPL-2.0
/* kill() calls, one perf event per call with the sender's cgroup and the signal: the
 * reference exporter's perf_event_array counter mode. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct signal_event {
	__u64 cgroup;
	__u64 sig;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} signals_sent_total SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_kill")
int kill_enter(struct syscall_trace_enter *ctx)
{
	struct signal_event e = {
		.cgroup = bpf_get_current_cgroup_id(),
		.sig = ctx->args[1],
	};

	bpf_perf_event_output(ctx, &signals_sent_total, BPF_F_CURRENT_CPU, &e, sizeof(e));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

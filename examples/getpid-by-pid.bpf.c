// SPDX-License-Identifier: GPL-2.0
/* getpid() calls per process, counted in a map keyed by pid: the original project's
 * style, whose kube_pod* decoders find the pod through /proc/<pid>/cgroup (so a
 * process must still run when it is scraped). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "maps.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, __u64);
} getpid_calls_by_pid_total SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpid")
int count_getpid_by_pid(void *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;

	map_increment(&getpid_calls_by_pid_total, &pid, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* CO-RE check: reads the current task's tgid two ways and counts whether each read
 * equals bpf_get_current_pid_tgid() >> 32. The `core` read is relocated by the loader
 * against the running kernel's BTF; the `fixed` read uses the offset vmlinux.h had at
 * compile time. Both read right on the kernel vmlinux.h came from; on any kernel where
 * task_struct is laid out differently only `core` stays right. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"

struct read_key {
	__u8 method; /* 0 core, 1 fixed */
	__u8 right;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, struct read_key);
	__type(value, __u64);
} task_tgid_reads_total SEC(".maps");

/* The compile-time offset: an enum constant can never be relocated. */
enum { FIXED_TGID_OFFSET = __builtin_offsetof(struct task_struct, tgid) };

SEC("tracepoint/syscalls/sys_enter_getpgid")
int check_tgid(void *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	__u32 want = bpf_get_current_pid_tgid() >> 32;
	__u32 fixed = 0;
	struct read_key key = {};

	key.right = BPF_CORE_READ(task, tgid) == want;
	map_increment(&task_tgid_reads_total, &key, 1);

	bpf_probe_read_kernel(&fixed, sizeof(fixed), (void *)task + FIXED_TGID_OFFSET);
	key.method = 1;
	key.right = fixed == want;
	map_increment(&task_tgid_reads_total, &key, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

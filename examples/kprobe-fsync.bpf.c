// SPDX-License-Identifier: GPL-2.0
/* vfs_fsync_range() entries and successful returns by cgroup, from a kprobe and a kretprobe
 * (kernels with CONFIG_KPROBES):
 * every fsync() goes through it. The config gives pod labels from the cgroup id. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "maps.bpf.h"

struct hook_key {
	__u64 cgroup;
	__u64 hook; /* 0 entry, 1 return */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct hook_key);
	__type(value, __u64);
} fsync_kprobe_hooks_total SEC(".maps");

static __always_inline void count(__u64 hook)
{
	struct hook_key key = { .cgroup = bpf_get_current_cgroup_id(), .hook = hook };

	map_increment(&fsync_kprobe_hooks_total, &key, 1);
}

SEC("kprobe/vfs_fsync_range")
int BPF_KPROBE(fsync_entry)
{
	count(0);
	return 0;
}

SEC("kretprobe/vfs_fsync_range")
int BPF_KRETPROBE(fsync_return, int ret)
{
	/* Counted only when it succeeds: a wrong return read would show. */
	if (ret == 0)
		count(1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* The reference exporter's cgroup_id_map of type cgrp_storage (kernels 6.2+): the
 * exporter sets the storage of every cgroup whose path matches to 1, and the program
 * reads it from the current task's cgroup, with no lookup by id. getppid() calls are
 * counted by cgroup and whether it matched. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "maps.bpf.h"

struct filter_key {
	__u64 cgroup;
	__u64 matched;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct filter_key);
	__type(value, __u64);
} getppid_calls_by_storage_total SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CGRP_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} getppid_cgroup_storage SEC(".maps");

SEC("tp_btf/sys_enter")
int BPF_PROG(count_getppid, struct pt_regs *regs, long id)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct cgroup *cgrp;
	struct filter_key key = {};
	__u64 *matched;

	if (id != 110) /* __NR_getppid on x86-64 */
		return 0;
	cgrp = task->cgroups->dfl_cgrp;
	key.cgroup = cgrp->kn->id;
	matched = bpf_cgrp_storage_get(&getppid_cgroup_storage, cgrp, 0, 0);
	key.matched = matched && *matched;
	map_increment(&getppid_calls_by_storage_total, &key, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

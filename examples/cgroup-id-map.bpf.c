// SPDX-License-Identifier: GPL-2.0
/* The reference exporter's cgroup_id_map (type hash): the exporter fills
 * getppid_cgroup_filter with the ids of cgroups whose paths match the config's
 * regexps and keeps it current, so the program tells matching cgroups apart in the
 * kernel. getppid() calls are counted by cgroup and whether it matched. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
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
} getppid_calls_by_filter_total SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, __u64);
} getppid_cgroup_filter SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	struct filter_key key = { .cgroup = bpf_get_current_cgroup_id() };

	key.matched = bpf_map_lookup_elem(&getppid_cgroup_filter, &key.cgroup) != NULL;
	map_increment(&getppid_calls_by_filter_total, &key, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

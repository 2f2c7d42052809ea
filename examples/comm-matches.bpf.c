// SPDX-License-Identifier: GPL-2.0
/* getppid() calls of processes whose name (comm) is in a match table the config fills
 * (`maps:`), counted per name and the group the table gives it: adding or removing a
 * name is a config change, not a new object. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "maps.bpf.h"

#define COMM_LEN 16

/* The match table: comm -> group. Empty until the exporter writes the config's
 * entries into it, before the program attaches. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, char[COMM_LEN]);
	__type(value, __u32);
} matched_comms SEC(".maps");

struct match_key {
	char comm[COMM_LEN];
	__u32 group;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct match_key);
	__type(value, __u64);
} comm_matches_total SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_matches(void *ctx)
{
	struct match_key key = {};
	__u32 *group;

	bpf_get_current_comm(key.comm, sizeof(key.comm));
	group = bpf_map_lookup_elem(&matched_comms, key.comm);
	if (!group)
		return 0;
	key.group = *group;
	map_increment(&comm_matches_total, &key, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

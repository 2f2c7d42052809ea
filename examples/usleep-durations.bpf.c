// SPDX-License-Identifier: GPL-2.0
/* Requested usleep() durations, from a uprobe on libc (BPF_KPROBE reads the
 * arguments of uprobes too), as a map-based exp2 histogram
 * per cgroup. Key bucket_max + 1 holds the sum, as the reference exporter reads it. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "maps.bpf.h"

#define MAX_BUCKET 20

struct usleep_key {
	__u64 cgroup;
	__u64 bucket;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct usleep_key);
	__type(value, __u64);
} usleep_requested_seconds SEC(".maps");

SEC("uprobe/libc.so.6:usleep")
int BPF_KPROBE(on_usleep, __u32 usec)
{
	struct usleep_key key = { .cgroup = bpf_get_current_cgroup_id() };
	__u64 bucket = log2_ceil(usec);

	key.bucket = bucket > MAX_BUCKET ? MAX_BUCKET : bucket;
	map_increment(&usleep_requested_seconds, &key, 1);
	key.bucket = MAX_BUCKET + 1;
	map_increment(&usleep_requested_seconds, &key, usec);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* The reference exporter's post_attach_mark hook and a metric without labels: a uprobe
 * on the exporter's own post_attach_mark(), which it calls once after attaching every
 * program, counts into a one-entry array; configs use this to fill a map at start. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} exporter_attach_marks_total SEC(".maps");

SEC("uprobe//proc/self/exe:post_attach_mark")
int attach_mark(void *ctx)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&exporter_attach_marks_total, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

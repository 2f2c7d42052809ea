// SPDX-License-Identifier: GPL-2.0
/* UNIX stream connects by pod and the listener's path, from an fentry program on the
 * LSM hook every connect passes. The path is read through `addr->name[0].sun_path`:
 * a CO-RE access into the flexible array `struct unix_address` ends with, as
 * cloudflare's unix-accept-latency does. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"

struct connect_key {
	__u64 cgroup;
	char path[24];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct connect_key);
	__type(value, __u64);
} unix_stream_connects_total SEC(".maps");

SEC("fentry/security_unix_stream_connect")
int BPF_PROG(unix_connect, struct sock *sock, struct sock *other, struct sock *newsk)
{
	/* `other` is the listener; a unix_sock begins with its struct sock. */
	struct unix_sock *listener = (struct unix_sock *)other;
	struct unix_address *addr = BPF_CORE_READ(listener, addr);
	struct connect_key key = { .cgroup = bpf_get_current_cgroup_id() };

	if (!addr)
		return 0;
	bpf_core_read(&key.path, sizeof(key.path) - 1, &addr->name[0].sun_path);
	map_increment(&unix_stream_connects_total, &key, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* A USDT probe's arguments in maps: the workload's `workload:job` probe (kind, cost),
 * counted per kind and its cost summed per kind. The binary is found on PATH, as
 * libbpf looks up a bare program name. libbpf's <bpf/usdt.bpf.h> reads the argument
 * locations the exporter writes into its maps. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/usdt.bpf.h>
#include "maps.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} workload_jobs_total SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} workload_job_cost_total SEC(".maps");

SEC("usdt/kebpf-workload:workload:job")
int BPF_USDT(job, long kind, long cost)
{
	__u32 key = kind;

	map_increment(&workload_jobs_total, &key, 1);
	map_increment(&workload_job_cost_total, &key, cost);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

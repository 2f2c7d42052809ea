// SPDX-License-Identifier: GPL-2.0
/* Block I/O requests as traces: one trace per request, with a zero-width span when
 * it is inserted into the I/O scheduler and a span from issue to completion (its
 * service). Records have the reference exporter's bio-trace layout: span ids are
 * left zero for the exporter to make up, the device and operation follow. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "block.bpf.h"
#include "output.bpf.h"
#include "tracing.bpf.h"

#define REQ_OP_MASK 0xff

struct disk_span {
	struct span_base base;
	__u32 device;
	__u32 op;
};

/* Issue times of requests in flight. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct request *);
	__type(value, __u64);
} issued SEC(".maps");

OUTPUT_RINGBUF(block_rq_insert_spans);
OUTPUT_RINGBUF(block_rq_service_spans);

/* The request's span record: its trace is the request (start time and address). */
static __always_inline void fill(struct disk_span *span, struct request *rq, __u64 start, __u64 duration)
{
	__builtin_memset(span, 0, sizeof(*span));
	span->base.parent.trace_id_hi = BPF_CORE_READ(rq, start_time_ns);
	span->base.parent.trace_id_lo = (__u64)rq;
	span->base.span_monotonic_timestamp_ns = start;
	span->base.span_duration_ns = duration;
	span->device = disk_dev(request_disk(rq));
	span->op = BPF_CORE_READ(rq, cmd_flags) & REQ_OP_MASK;
}

SEC("tp_btf/block_rq_insert")
int BPF_PROG(block_rq_insert)
{
	struct request *rq = after_queue_arg(ctx, KERNEL_VERSION(5, 10, 0));
	struct disk_span *span = output_reserve(&block_rq_insert_spans, sizeof(*span));

	if (span) {
		fill(span, rq, bpf_ktime_get_ns(), 0);
		OUTPUT_SUBMIT(ctx, block_rq_insert_spans, span);
	}
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue)
{
	struct request *rq = after_queue_arg(ctx, KERNEL_VERSION(5, 10, 0));
	__u64 now = bpf_ktime_get_ns();

	bpf_map_update_elem(&issued, &rq, &now, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq)
{
	__u64 *start = bpf_map_lookup_elem(&issued, &rq);
	struct disk_span *span;

	if (!start)
		return 0;
	span = output_reserve(&block_rq_service_spans, sizeof(*span));
	if (span) {
		fill(span, rq, *start, bpf_ktime_get_ns() - *start);
		OUTPUT_SUBMIT(ctx, block_rq_service_spans, span);
	}
	bpf_map_delete_elem(&issued, &rq);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

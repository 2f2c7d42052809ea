// SPDX-License-Identifier: GPL-2.0
/* Block I/O latency (issue to completion) and size per cgroup, disk and operation, as
 * in-kernel exp2 histograms: a busy disk completes hundreds of thousands of requests a
 * second, and completion runs in interrupt context.
 *
 * The I/O belongs to the cgroup that owns its bio (the bio's blkcg): for writeback
 * that is who dirtied the pages, not the flusher thread that submits them. Where the
 * io controller lives in a cgroup v1 hierarchy (hybrid hosts) the blkcg is not a v2
 * cgroup; there the bio is charged to the v2 cgroup of the task that submitted it
 * (on v1 the kernel attributes writeback to nobody either). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "cgroup.bpf.h"
#include "histogram.bpf.h"
#include "block.bpf.h"

/* Latency: 2^10 ns (about 1 us) to 2^36 ns (69 s). Size: 2^9 (512 B) to 2^27 (128 MiB). */
#define LATENCY_MIN 10
#define LATENCY_MAX 36
#define SIZE_MIN 9
#define SIZE_MAX 27

#define REQ_OP_MASK 0xff
#define OP_OTHER 4 /* read 0, write 1, flush 2, discard 3 are the kernel's REQ_OP_* */

struct io_key {
	__u64 cgroup;
	__u32 device; /* new_encode_dev(disk) */
	__u32 op;
	__u64 bucket;
};

struct issued {
	__u64 ts;
	__u64 cgroup;
	__u32 device;
	__u32 op;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct request *);
	__type(value, struct issued);
} in_flight SEC(".maps");

/* Submitters of bios whose blkcg is not a v2 cgroup (hybrid hosts only). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct bio *);
	__type(value, __u64);
} bio_submitter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct io_key);
	__type(value, __u64);
} block_io_latency_seconds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct io_key);
	__type(value, __u64);
} block_io_size_bytes SEC(".maps");

/* The bio's blkcg as a v2 cgroup id; 0 when it has none or it lives in a v1 hierarchy
 * (the default hierarchy's id is 0). */
static __always_inline __u64 bio_blkcg_id(struct bio *bio)
{
	struct cgroup *cgrp = BPF_CORE_READ(bio, bi_blkg, blkcg, css.cgroup);

	if (!cgrp || BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	return cgroup_id_of(cgrp);
}

SEC("tp_btf/block_bio_queue")
int BPF_PROG(block_bio_queue)
{
	struct bio *bio = after_queue_arg(ctx, KERNEL_VERSION(5, 11, 0));
	__u64 cgroup;

	if (bio_blkcg_id(bio))
		return 0;
	cgroup = bpf_get_current_cgroup_id();
	bpf_map_update_elem(&bio_submitter, &bio, &cgroup, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue)
{
	struct request *rq = after_queue_arg(ctx, KERNEL_VERSION(5, 10, 0));
	struct gendisk *disk = request_disk(rq);
	struct bio *bio = BPF_CORE_READ(rq, bio);
	__u32 op = BPF_CORE_READ(rq, cmd_flags) & REQ_OP_MASK;
	struct issued issued = {
		.ts = bpf_ktime_get_ns(),
		.cgroup = bio_blkcg_id(bio),
		.device = disk_dev(disk),
		.op = op < OP_OTHER ? op : OP_OTHER,
		.bytes = BPF_CORE_READ(rq, __data_len),
	};

	if (!issued.cgroup && bio) {
		__u64 *submitter = bpf_map_lookup_elem(&bio_submitter, &bio);

		if (submitter) {
			issued.cgroup = *submitter;
			bpf_map_delete_elem(&bio_submitter, &bio);
		}
	}
	bpf_map_update_elem(&in_flight, &rq, &issued, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq)
{
	struct issued *issued = bpf_map_lookup_elem(&in_flight, &rq);
	struct io_key key;

	if (!issued)
		return 0;
	key.cgroup = issued->cgroup;
	key.device = issued->device;
	key.op = issued->op;
	histogram_add(&block_io_latency_seconds, &key, &key.bucket, bpf_ktime_get_ns() - issued->ts,
		      LATENCY_MIN, LATENCY_MAX);
	histogram_add(&block_io_size_bytes, &key, &key.bucket, issued->bytes, SIZE_MIN, SIZE_MAX);
	bpf_map_delete_elem(&in_flight, &rq);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

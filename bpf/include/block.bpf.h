/* Block layer helpers shared by block I/O programs: a request's disk and the
 * tracepoint arguments that moved between kernel versions. */
#ifndef KUBE_EBPF_BLOCK_BPF_H
#define KUBE_EBPF_BLOCK_BPF_H

#include <bpf/bpf_core_read.h>

extern int LINUX_KERNEL_VERSION __kconfig;

/* Before 5.17 a request named its disk. */
struct request___old {
	struct gendisk *rq_disk;
};

static __always_inline struct gendisk *request_disk(struct request *rq)
{
	if (bpf_core_field_exists(((struct request___old *)rq)->rq_disk))
		return BPF_CORE_READ((struct request___old *)rq, rq_disk);
	return BPF_CORE_READ(rq, q, disk);
}

/* The tracepoints' first argument was the request_queue until 5.10 (block_rq_issue)
 * and 5.11 (block_bio_queue): `dropped` is the version without it. The loads are
 * written out so that clang cannot fold them into one load from a computed offset,
 * which the verifier refuses (a context pointer must not be modified). */
static __always_inline void *after_queue_arg(unsigned long long *ctx, int dropped)
{
	void *arg;

	if (LINUX_KERNEL_VERSION < dropped)
		asm volatile("%[arg] = *(u64 *)(%[ctx] + 8)" : [arg] "=r"(arg) : [ctx] "r"(ctx));
	else
		asm volatile("%[arg] = *(u64 *)(%[ctx] + 0)" : [arg] "=r"(arg) : [ctx] "r"(ctx));
	return arg;
}

/* A disk's device number as the kernel encodes it for userspace (new_encode_dev). */
static __always_inline __u32 disk_dev(struct gendisk *disk)
{
	__u32 major = BPF_CORE_READ(disk, major), minor = BPF_CORE_READ(disk, first_minor);

	return (minor & 0xff) | (major << 8) | ((minor & ~0xffU) << 12);
}

#endif

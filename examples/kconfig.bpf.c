// SPDX-License-Identifier: GPL-2.0
/* .kconfig externs as libbpf resolves them: the kernel version, probed features and
 * build options, counted per getsid() call under labels that carry their values. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "maps.bpf.h"

extern __u32 LINUX_KERNEL_VERSION __kconfig;
extern _Bool LINUX_HAS_BPF_COOKIE __kconfig;
extern _Bool LINUX_HAS_SYSCALL_WRAPPER __kconfig;
extern int CONFIG_HZ __kconfig __weak;
extern enum libbpf_tristate CONFIG_BPF_SYSCALL __kconfig;
extern _Bool CONFIG_KUBE_EBPF_EXPORTER_NO_SUCH_OPTION __kconfig __weak;

struct kconfig_key {
	__u8 major;
	__u8 minor;
	__u8 cookie;
	__u8 wrapper;
	__u16 hz;
	__u8 bpf_syscall;
	__u8 missing;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, struct kconfig_key);
	__type(value, __u64);
} kconfig_calls_total SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getsid")
int count_getsid(void *ctx)
{
	struct kconfig_key key = {
		.major = LINUX_KERNEL_VERSION >> 16,
		.minor = (LINUX_KERNEL_VERSION >> 8) & 0xff,
		.cookie = LINUX_HAS_BPF_COOKIE,
		.wrapper = LINUX_HAS_SYSCALL_WRAPPER,
		.hz = CONFIG_HZ,
		.bpf_syscall = CONFIG_BPF_SYSCALL,
		.missing = CONFIG_KUBE_EBPF_EXPORTER_NO_SUCH_OPTION,
	};

	map_increment(&kconfig_calls_total, &key, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

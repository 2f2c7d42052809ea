/* Cgroup ids of things other than `current`: a task, a socket, a block I/O.
 *
 * Hooks that fire in softirq, timer or interrupt context (TCP retransmits, packet
 * drops, I/O completion) or about another task (sched_switch's next) must not use
 * bpf_get_current_cgroup_id(): `current` there is whoever happened to run. These read
 * the owner's cgroup v2 id (the id the enrich stage maps to pods) with CO-RE, so they
 * work on every kernel from 5.10. 0 means unknown: no pod labels. */
#ifndef KUBE_EBPF_CGROUP_BPF_H
#define KUBE_EBPF_CGROUP_BPF_H

#include <bpf/bpf_core_read.h>

/* Before 5.15 (commit "cgroup: Fix sock_cgroup_data on big-endian") the socket's
 * cgroup pointer shared a u64 with net_cls/net_prio data; bit 0 set means data. */
struct sock_cgroup_data___old {
	__u64 val;
};

static __always_inline __u64 cgroup_id_of(struct cgroup *cgrp)
{
	return cgrp ? BPF_CORE_READ(cgrp, kn, id) : 0;
}

/* The task's cgroup on the default (v2) hierarchy, as bpf_get_current_cgroup_id(). */
static __always_inline __u64 task_cgroup_id(struct task_struct *task)
{
	return cgroup_id_of(BPF_CORE_READ(task, cgroups, dfl_cgrp));
}

/* The v2 cgroup of the task that created the socket. */
static __always_inline __u64 sock_cgroup_id(const struct sock *sk)
{
	struct cgroup *cgrp;

	if (!sk)
		return 0;
	if (bpf_core_field_exists(sk->sk_cgrp_data.cgroup)) {
		cgrp = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	} else {
		struct sock_cgroup_data___old *old = (void *)&sk->sk_cgrp_data;
		__u64 val = BPF_CORE_READ(old, val);

		if (val & 1)
			return 0;
		cgrp = (void *)val;
	}
	return cgroup_id_of(cgrp);
}

#endif

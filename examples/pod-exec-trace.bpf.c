// SPDX-License-Identifier: GPL-2.0
/* exec-trace's spans with the cgroup id of the process: the exporter adds the pod's
 * k8s.* attributes to each span (pod-exec-trace.yaml's cgroup_field). */
#define EXEC_SPAN_CGROUP
#include "exec-trace.bpf.c"

/* Span records in the layout `tracing:` configs read (the reference exporter's):
 * a trace id (16 bytes), the parent's span id, the span's own id, its start on
 * CLOCK_MONOTONIC (bpf_ktime_get_ns) and its duration, then whatever the program
 * adds. Zero ids mean "none": no parent makes a root span, no span id gets one made
 * up in userspace. The matching labels:
 *
 *	- { name: trace_id, size: 16, decoders: [{ name: hex }] }
 *	- { name: parent_span_id, size: 8, decoders: [{ name: hex }] }
 *	- { name: span_id, size: 8, decoders: [{ name: hex }] }
 *	- { name: span_monotonic_timestamp_ns, size: 8, decoders: [{ name: uint }] }
 *	- { name: span_duration_ns, size: 8, decoders: [{ name: uint }] }
 */
#ifndef KUBE_EBPF_TRACING_BPF_H
#define KUBE_EBPF_TRACING_BPF_H

struct span_parent {
	__u64 trace_id_hi;
	__u64 trace_id_lo;
	__u64 span_id;
};

struct span_base {
	struct span_parent parent;
	__u64 span_id;
	__u64 span_monotonic_timestamp_ns;
	__u64 span_duration_ns;
};

#endif

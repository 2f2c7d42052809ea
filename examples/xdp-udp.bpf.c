// SPDX-License-Identifier: GPL-2.0
/* UDP packets received on the loopback interface by destination port, from an XDP
 * program attached by its section name (`xdp/<ifname>`, as the reference exporter
 * does); packet headers are read through CO-RE-relocated vmlinux.h structs. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.bpf.h"

#define ETH_P_IP 0x0800
#define IPPROTO_UDP_NUM 17

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64); /* destination port */
	__type(value, __u64);
} xdp_udp_packets_total SEC(".maps");

SEC("xdp/lo")
int count_udp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp;
	__u64 port;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->protocol != IPPROTO_UDP_NUM)
		return XDP_PASS;
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > end)
		return XDP_PASS;
	port = bpf_ntohs(udp->dest);
	map_increment(&xdp_udp_packets_total, &port, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

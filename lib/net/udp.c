/*
 * udp.c - UDP (RFC 768) for DNS: a few bound ports per core, datagrams
 * delivered to their callback, sends without fragmentation.
 */
#include "stack_priv.h"

#include <errno.h>
#include <string.h>

#include <rte_ip.h>
#include <rte_udp.h>

int udp_bind(struct net_stack *st, uint16_t port, udp_recv_fn fn, void *ctx)
{
	struct net_stack_priv *sp = net_priv(st);
	for (unsigned i = 0; i < sp->n_udp; i++)
		if (sp->udp[i].port == port)
			return -EADDRINUSE;
	if (sp->n_udp == NET_UDP_BINDS)
		return -ENOSPC;
	sp->udp[sp->n_udp++] = (struct net_udp_bind){.port = port, .fn = fn, .ctx = ctx};
	return 0;
}

int udp_unbind(struct net_stack *st, uint16_t port)
{
	struct net_stack_priv *sp = net_priv(st);
	for (unsigned i = 0; i < sp->n_udp; i++)
		if (sp->udp[i].port == port) {
			sp->udp[i] = sp->udp[--sp->n_udp];
			return 0;
		}
	return -ENOENT;
}

void net_udp_input(struct net_stack_priv *sp, uint32_t src, uint32_t dst, const uint8_t *data,
		   size_t len)
{
	const struct rte_udp_hdr *uh = (const struct rte_udp_hdr *)data;
	size_t ulen = rte_be_to_cpu_16(uh->dgram_len);
	sp->stats.udp_in++;
	if (ulen < sizeof(*uh) || ulen > len) {
		sp->stats.udp_bad++;
		return;
	}
	uint16_t dport = rte_be_to_cpu_16(uh->dst_port);
	for (unsigned i = 0; i < sp->n_udp; i++)
		if (sp->udp[i].port == dport) {
			sp->udp[i].fn(sp->udp[i].ctx, src, rte_be_to_cpu_16(uh->src_port), dst,
				      dport, data + sizeof(*uh), ulen - sizeof(*uh));
			return;
		}
	sp->stats.udp_no_port++;
}

int udp_send(struct net_stack *st, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
	     const void *data, size_t len)
{
	struct net_stack_priv *sp = net_priv(st);
	uint8_t buf[RTE_ETHER_MTU];
	if (len > sizeof(buf) - sizeof(struct rte_ipv4_hdr) - sizeof(struct rte_udp_hdr))
		return -EMSGSIZE;
	struct rte_udp_hdr *uh = (struct rte_udp_hdr *)buf;
	uh->src_port = rte_cpu_to_be_16(sport);
	uh->dst_port = rte_cpu_to_be_16(dport);
	uh->dgram_len = rte_cpu_to_be_16((uint16_t)(sizeof(*uh) + len));
	uh->dgram_cksum = 0;
	memcpy(uh + 1, data, len);
	return net_ipv4_output(sp, src, dst, IPPROTO_UDP, buf, sizeof(*uh) + len);
}

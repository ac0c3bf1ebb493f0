/*
 * udp.c - UDP (RFC 768) for DNS: up to NET_UDP_BINDS binds per core, each a
 * single port or a port range, datagrams delivered to their callback, sends
 * without fragmentation.
 *
 * A resolver draws each query's source port at random from thousands of
 * ports (RFC 5452 9.2), so one bind covers a whole range and demultiplexing
 * is one lookup in a per-core port -> bind table (O(1)), whatever the number
 * of ports bound.  udp_port_steers_here() tells which of those ports bring a
 * reply from a given server back to this core, as tcp_connect() does for its
 * ephemeral ports.
 */
#include "stack_priv.h"

#include <errno.h>
#include <string.h>

#include <rte_ip.h>
#include <rte_udp.h>

_Static_assert(NET_UDP_BINDS < UINT8_MAX, "udp_slot holds slot + 1 in a byte");

int udp_bind_range(struct net_stack *st, uint16_t lo, uint16_t hi, udp_recv_fn fn, void *ctx)
{
	struct net_stack_priv *sp = net_priv(st);
	unsigned slot;

	if (fn == NULL || lo == 0 || hi < lo)
		return -EINVAL;
	for (uint32_t p = lo; p <= hi; p++)
		if (sp->udp_slot[p] != 0)
			return -EADDRINUSE;
	for (slot = 0; slot < NET_UDP_BINDS; slot++)
		if (sp->udp[slot].fn == NULL)
			break;
	if (slot == NET_UDP_BINDS)
		return -ENOSPC;
	sp->udp[slot] = (struct net_udp_bind){.lo = lo, .hi = hi, .fn = fn, .ctx = ctx};
	sp->n_udp++;
	for (uint32_t p = lo; p <= hi; p++)
		sp->udp_slot[p] = (uint8_t)(slot + 1);
	return 0;
}

int udp_bind(struct net_stack *st, uint16_t port, udp_recv_fn fn, void *ctx)
{
	return udp_bind_range(st, port, port, fn, ctx);
}

int udp_unbind_range(struct net_stack *st, uint16_t lo, uint16_t hi)
{
	struct net_stack_priv *sp = net_priv(st);
	unsigned s = sp->udp_slot[lo];

	/* Only a whole bind is removed, named exactly as it was made. */
	if (s == 0 || sp->udp[s - 1].lo != lo || sp->udp[s - 1].hi != hi)
		return -ENOENT;
	for (uint32_t p = lo; p <= hi; p++)
		sp->udp_slot[p] = 0;
	sp->udp[s - 1] = (struct net_udp_bind){0};
	sp->n_udp--;
	return 0;
}

int udp_unbind(struct net_stack *st, uint16_t port)
{
	return udp_unbind_range(st, port, port);
}

bool udp_port_steers_here(struct net_stack *st, uint16_t lport, uint32_t raddr, uint16_t rport)
{
	struct net_stack_priv *sp = net_priv(st);
	uint32_t nh;
	struct net_port_ctx *pc = net_route(sp, raddr, &nh);
	if (pc == NULL)
		return true; /* no route: the send fails anyway */
	/* As the reply will arrive: from raddr:rport to our address:lport. */
	return net_port_flow_owner(pc->port, raddr, pc->port->addr, rport, lport) == sp->worker;
}

void net_udp_input(struct net_stack_priv *sp, uint32_t src, uint32_t dst, const uint8_t *data,
		   size_t len)
{
	const struct rte_udp_hdr *uh = (const struct rte_udp_hdr *)data;
	sp->stats.udp_in++;
	if (len < sizeof(*uh)) {
		sp->stats.udp_bad++;
		return;
	}
	size_t ulen = rte_be_to_cpu_16(uh->dgram_len);
	if (ulen < sizeof(*uh) || ulen > len) {
		sp->stats.udp_bad++;
		return;
	}
	uint16_t dport = rte_be_to_cpu_16(uh->dst_port);
	unsigned s = sp->udp_slot[dport];
	if (s == 0) {
		sp->stats.udp_no_port++;
		return;
	}
	const struct net_udp_bind *b = &sp->udp[s - 1];
	b->fn(b->ctx, src, rte_be_to_cpu_16(uh->src_port), dst, dport, data + sizeof(*uh),
	      ulen - sizeof(*uh));
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

/*
 * ipv4.c - IPv4 input and output (RFC 791, RFC 1122 host requirements).
 *
 * Input validates everything before looking further: version, header
 * length, total length against the frame, header checksum (unless the NIC
 * vouched for it), destination, and the L4 checksum of TCP and UDP (so
 * TCP and UDP receive verified segments).  Fragments are counted and
 * dropped: SMTP and DNS over EDNS(1232) never need them.  Options are
 * skipped and counted.  Output builds Ethernet + IPv4 around a payload
 * copied in one or several pieces (TCP: header, then its send ring's
 * bytes), summing while it copies, fills the L4 checksum (or leaves it to
 * the NIC), routes (connected subnet, else the port's gateway) and
 * resolves the next hop.
 */
#include "cksum.h"
#include "stack_priv.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

#include <rte_ip.h>
#include <rte_tcp.h>
#include <rte_udp.h>

#define NET_IP_TTL 64

struct net_port_ctx *net_route(struct net_stack_priv *sp, uint32_t dst, uint32_t *nexthop)
{
	for (unsigned i = 0; i < sp->n_ports; i++) {
		struct net_port *p = sp->ports[i].port;
		if ((dst & p->netmask) == (p->addr & p->netmask)) {
			*nexthop = dst;
			return &sp->ports[i];
		}
	}
	for (unsigned i = 0; i < sp->n_ports; i++) {
		if (sp->ports[i].port->gateway != 0) {
			*nexthop = sp->ports[i].port->gateway;
			return &sp->ports[i];
		}
	}
	return NULL;
}

/*
 * The sum of the TCP/UDP pseudo-header (RFC 9293 section 3.1, RFC 768)
 * from its fields (addresses as on the wire), in net_csum()'s convention:
 * native-order words of the bytes as they are on the wire.  The words are
 * src, dst, (0, proto) and the length.  rte_ipv4_phdr_cksum() builds the
 * pseudo-header on the stack with byte, word and long stores and reads it
 * back in 16-bit loads, which the CPU cannot forward from those stores:
 * that stall was ~190 cycles per received segment in bench/net's profile.
 */
static inline uint64_t phdr_sum(uint32_t src_be, uint32_t dst_be, uint8_t proto, size_t l4len)
{
	return (uint64_t)src_be + dst_be + rte_cpu_to_be_16((uint16_t)proto) +
	       rte_cpu_to_be_16((uint16_t)l4len);
}

static bool l4_cksum_ok(const struct rte_mbuf *m, const struct rte_ipv4_hdr *ip, const void *l4)
{
	uint64_t f = m->ol_flags & RTE_MBUF_F_RX_L4_CKSUM_MASK;
	if (f == RTE_MBUF_F_RX_L4_CKSUM_GOOD)
		return true;
	if (f == RTE_MBUF_F_RX_L4_CKSUM_BAD)
		return false;
	/* Pseudo-header plus segment must sum to all ones (RFC 1071). */
	size_t l4len = rte_be_to_cpu_16(ip->total_length) - rte_ipv4_hdr_len(ip);
	uint64_t ph = phdr_sum(ip->src_addr, ip->dst_addr, ip->next_proto_id, l4len);
	return net_csum_fold(net_csum(l4, l4len, ph)) == 0xffff;
}

void net_ipv4_input(struct net_stack_priv *sp, struct net_port_ctx *pc, struct rte_mbuf *m)
{
	size_t avail = rte_pktmbuf_data_len(m) - RTE_ETHER_HDR_LEN;
	struct rte_ipv4_hdr *ip =
		rte_pktmbuf_mtod_offset(m, struct rte_ipv4_hdr *, RTE_ETHER_HDR_LEN);

	sp->stats.ip_in++;
	if (m->nb_segs != 1 || avail < sizeof(*ip) || (ip->version_ihl >> 4) != 4) {
		sp->stats.ip_bad_header++;
		goto drop;
	}
	size_t ihl = (ip->version_ihl & 0xf) * 4u;
	size_t total = rte_be_to_cpu_16(ip->total_length);
	if (ihl < sizeof(*ip) || ihl > avail) {
		sp->stats.ip_bad_header++;
		goto drop;
	}
	if (total < ihl || total > avail) {
		sp->stats.ip_bad_len++;
		goto drop;
	}
	uint64_t cf = m->ol_flags & RTE_MBUF_F_RX_IP_CKSUM_MASK;
	if (cf == RTE_MBUF_F_RX_IP_CKSUM_BAD ||
	    (cf != RTE_MBUF_F_RX_IP_CKSUM_GOOD && net_csum_fold(net_csum(ip, ihl, 0)) != 0xffff)) {
		sp->stats.ip_bad_cksum++;
		goto drop;
	}
	uint32_t dst = rte_be_to_cpu_32(ip->dst_addr);
	uint32_t src = rte_be_to_cpu_32(ip->src_addr);
	if (dst != pc->port->addr) {
		sp->stats.ip_not_us++;
		goto drop;
	}
	if (rte_be_to_cpu_16(ip->fragment_offset) &
	    (RTE_IPV4_HDR_MF_FLAG | RTE_IPV4_HDR_OFFSET_MASK)) {
		sp->stats.ip_frags++;
		goto drop;
	}
	if (ihl > sizeof(*ip))
		sp->stats.ip_options++;
	uint8_t *l4 = (uint8_t *)ip + ihl;
	size_t l4len = total - ihl;
	switch (ip->next_proto_id) {
	case IPPROTO_TCP:
		if (l4len < sizeof(struct rte_tcp_hdr)) {
			sp->stats.ip_bad_len++;
			goto drop;
		}
		if (!l4_cksum_ok(m, ip, l4)) {
			sp->stats.l4_bad_cksum++;
			goto drop;
		}
		tcp_input(sp->st->tcp, src, dst, l4, l4len, sp->now_us);
		break;
	case IPPROTO_UDP:
		if (l4len < sizeof(struct rte_udp_hdr)) {
			sp->stats.udp_bad++;
			goto drop;
		}
		if (((struct rte_udp_hdr *)l4)->dgram_cksum != 0 && !l4_cksum_ok(m, ip, l4)) {
			sp->stats.l4_bad_cksum++;
			goto drop;
		}
		net_udp_input(sp, src, dst, l4, l4len);
		break;
	case IPPROTO_ICMP:
		net_icmp_input(sp, src, dst, l4, l4len);
		break;
	default:
		sp->stats.ip_unknown_proto++;
		break;
	}
drop:
	rte_pktmbuf_free(m);
}

int net_ipv4_output(struct net_stack_priv *sp, uint32_t src, uint32_t dst, uint8_t proto,
		    const uint8_t *payload, size_t len)
{
	const struct net_piece piece = {payload, len};
	return net_ipv4_output_v(sp, src, dst, proto, &piece, 1);
}

/*
 * Copy the pieces into the frame and sum them.  A piece that starts at an
 * odd offset has its bytes in the other halves of the 16-bit words, so its
 * folded sum is byte-swapped before it is added (RFC 1071 section 2(B)).
 */
static uint64_t copy_pieces(uint8_t *to, const struct net_piece *pieces, unsigned n)
{
	uint64_t sum = 0;
	size_t off = 0;
	for (unsigned i = 0; i < n; i++) {
		uint64_t s = net_csum_copy(to + off, pieces[i].data, pieces[i].len, 0);
		if (off & 1) {
			uint16_t f = net_csum_fold(s);
			s = (uint16_t)((f >> 8) | (f << 8));
		}
		sum += s;
		off += pieces[i].len;
	}
	return sum;
}

int net_ipv4_output_v(struct net_stack_priv *sp, uint32_t src, uint32_t dst, uint8_t proto,
		      const struct net_piece *pieces, unsigned n)
{
	size_t len = 0;
	for (unsigned i = 0; i < n; i++)
		len += pieces[i].len;
	uint32_t nh;
	struct net_port_ctx *pc = net_route(sp, dst, &nh);
	if (pc == NULL) {
		sp->stats.ip_no_route++;
		return -ENETUNREACH;
	}
	size_t hdrs = RTE_ETHER_HDR_LEN + sizeof(struct rte_ipv4_hdr);
	if (len > RTE_ETHER_MTU - sizeof(struct rte_ipv4_hdr)) {
		sp->stats.ip_too_big++;
		return -EMSGSIZE;
	}
	struct rte_mbuf *m = rte_pktmbuf_alloc(sp->pool);
	if (m == NULL) {
		sp->stats.tx_nombuf++;
		return -ENOBUFS;
	}
	uint8_t *frame = (uint8_t *)rte_pktmbuf_append(m, (uint16_t)(hdrs + len));
	if (frame == NULL) {
		rte_pktmbuf_free(m);
		sp->stats.ip_too_big++;
		return -EMSGSIZE;
	}
	struct rte_ether_hdr *eh = (struct rte_ether_hdr *)frame;
	struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(eh + 1);
	uint8_t *l4 = (uint8_t *)(ip + 1);

	rte_ether_addr_copy(&pc->port->mac, &eh->src_addr);
	eh->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
	/* The header's words kept in locals: the sums below read no header back. */
	uint16_t w_vhl_tos = rte_cpu_to_be_16(RTE_IPV4_VHL_DEF << 8);
	uint16_t w_len = rte_cpu_to_be_16((uint16_t)(sizeof(*ip) + len));
	uint16_t w_id = rte_cpu_to_be_16(sp->ip_id++);
	uint16_t w_frag = rte_cpu_to_be_16(proto == IPPROTO_TCP ? RTE_IPV4_HDR_DF_FLAG : 0);
	uint16_t w_ttl_proto = rte_cpu_to_be_16((uint16_t)(NET_IP_TTL << 8 | proto));
	uint32_t src_be = rte_cpu_to_be_32(src ? src : pc->port->addr);
	uint32_t dst_be = rte_cpu_to_be_32(dst);
	ip->version_ihl = RTE_IPV4_VHL_DEF;
	ip->type_of_service = 0;
	ip->total_length = w_len;
	ip->packet_id = w_id;
	ip->fragment_offset = w_frag;
	ip->time_to_live = NET_IP_TTL;
	ip->next_proto_id = proto;
	ip->src_addr = src_be;
	ip->dst_addr = dst_be;
	ip->hdr_checksum = 0;
	uint64_t sum = copy_pieces(l4, pieces, n); /* the checksum pass is the copy */

	unaligned_uint16_t *l4_cksum = NULL;
	if (proto == IPPROTO_TCP && len >= sizeof(struct rte_tcp_hdr))
		l4_cksum = (unaligned_uint16_t *)(l4 + offsetof(struct rte_tcp_hdr, cksum));
	else if (proto == IPPROTO_UDP && len >= sizeof(struct rte_udp_hdr))
		l4_cksum = (unaligned_uint16_t *)(l4 + offsetof(struct rte_udp_hdr, dgram_cksum));
	if (pc->port->tx_offloads) {
		m->l2_len = RTE_ETHER_HDR_LEN;
		m->l3_len = sizeof(*ip);
		m->ol_flags |= RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IP_CKSUM;
		if (l4_cksum != NULL) {
			m->ol_flags |= proto == IPPROTO_TCP ? RTE_MBUF_F_TX_TCP_CKSUM
							    : RTE_MBUF_F_TX_UDP_CKSUM;
			*l4_cksum = rte_ipv4_phdr_cksum(ip, m->ol_flags);
		}
	} else {
		uint64_t hs =
			(uint64_t)w_vhl_tos + w_len + w_id + w_frag + w_ttl_proto + src_be + dst_be;
		ip->hdr_checksum = (uint16_t)~net_csum_fold(hs);
		if (l4_cksum != NULL) {
			/* The field was zero in payload; an all-zero UDP sum is sent as ones. */
			uint16_t c = (uint16_t)~net_csum_fold(sum +
							      phdr_sum(src_be, dst_be, proto, len));
			*l4_cksum = c == 0 && proto == IPPROTO_UDP ? 0xffff : c;
		}
	}
	net_arp_output(sp, pc, nh, m);
	return 0;
}

/*
 * test_ipv4.c - Ethernet, ARP, IPv4, ICMP and UDP of lib/net, driven with
 * crafted frames through a net_ring port: frames are enqueued on the port's
 * RX ring, net_stack_poll() runs, and whatever the stack sent is dequeued
 * from the TX ring and checked.
 */
#include "stack_priv.h"
#include "mx_test.h"

#include <string.h>

#include <rte_arp.h>
#include <rte_eal.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_icmp.h>
#include <rte_ip.h>
#include <rte_tcp.h>
#include <rte_udp.h>

#define US 0x0a4d0002u	 /* 10.77.0.2: the stack */
#define PEER 0x0a4d0001u /* 10.77.0.1 */
#define FAR 0x08080808u	 /* off-link: routed via the gateway (PEER) */

static struct rte_mempool *pool;
static struct rte_ring *rx_ring, *tx_ring;
static struct net_port *port;
static struct net_stack *st;
static struct net_stack_priv *sp;
static uint64_t now = 1000000;
static const struct rte_ether_addr peer_mac = {{0x02, 0, 0, 0, 0, 0x01}};

static struct rte_mbuf *frame(const struct rte_ether_addr *dst, uint16_t type, const void *payload,
			      size_t len)
{
	struct rte_mbuf *m = rte_pktmbuf_alloc(pool);
	struct rte_ether_hdr *eh =
		(struct rte_ether_hdr *)rte_pktmbuf_append(m, (uint16_t)(sizeof(*eh) + len));
	eh->dst_addr = *dst;
	eh->src_addr = peer_mac;
	eh->ether_type = rte_cpu_to_be_16(type);
	memcpy(eh + 1, payload, len);
	return m;
}

static void inject(struct rte_mbuf *m)
{
	CU_ASSERT_EQUAL_FATAL(rte_ring_enqueue(rx_ring, m), 0);
}

static unsigned poll_out(struct rte_mbuf **out, unsigned max)
{
	net_stack_poll(st, now);
	return rte_ring_dequeue_burst(tx_ring, (void **)out, max, NULL);
}

static void drain(void)
{
	struct rte_mbuf *out[64];
	unsigned n;
	while ((n = poll_out(out, 64)) > 0)
		rte_pktmbuf_free_bulk(out, n);
}

static size_t ipv4(uint8_t *buf, uint32_t src, uint32_t dst, uint8_t proto, const void *l4,
		   size_t len)
{
	struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)buf;
	memset(ip, 0, sizeof(*ip));
	ip->version_ihl = RTE_IPV4_VHL_DEF;
	ip->total_length = rte_cpu_to_be_16((uint16_t)(sizeof(*ip) + len));
	ip->time_to_live = 64;
	ip->next_proto_id = proto;
	ip->src_addr = rte_cpu_to_be_32(src);
	ip->dst_addr = rte_cpu_to_be_32(dst);
	memcpy(ip + 1, l4, len);
	ip->hdr_checksum = rte_ipv4_cksum(ip);
	return sizeof(*ip) + len;
}

static struct rte_mbuf *arp_frame(uint16_t op, uint32_t sip, uint32_t tip)
{
	struct rte_arp_hdr ah;
	memset(&ah, 0, sizeof(ah));
	ah.arp_hardware = rte_cpu_to_be_16(RTE_ARP_HRD_ETHER);
	ah.arp_protocol = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
	ah.arp_hlen = 6;
	ah.arp_plen = 4;
	ah.arp_opcode = rte_cpu_to_be_16(op);
	ah.arp_data.arp_sha = peer_mac;
	ah.arp_data.arp_sip = rte_cpu_to_be_32(sip);
	ah.arp_data.arp_tip = rte_cpu_to_be_32(tip);
	static const struct rte_ether_addr bcast = {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}};
	return frame(op == RTE_ARP_OP_REQUEST ? &bcast : &port->mac, RTE_ETHER_TYPE_ARP, &ah,
		     sizeof(ah));
}

static const struct rte_arp_hdr *as_arp(struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod_offset(m, const struct rte_arp_hdr *, RTE_ETHER_HDR_LEN);
}

static const struct rte_ipv4_hdr *as_ip(struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod_offset(m, const struct rte_ipv4_hdr *, RTE_ETHER_HDR_LEN);
}

/* Teach the stack the peer's MAC so IP output goes out at once. */
static void learn_peer(void)
{
	inject(arp_frame(RTE_ARP_OP_REQUEST, PEER, US));
	drain();
}

static void test_arp_reply_to_request(void)
{
	struct rte_mbuf *out[4];
	inject(arp_frame(RTE_ARP_OP_REQUEST, PEER, US));
	unsigned n = poll_out(out, 4);
	CU_ASSERT_EQUAL_FATAL(n, 1);
	const struct rte_ether_hdr *eh = rte_pktmbuf_mtod(out[0], const struct rte_ether_hdr *);
	CU_ASSERT_TRUE(rte_is_same_ether_addr(&eh->dst_addr, &peer_mac));
	const struct rte_arp_hdr *ah = as_arp(out[0]);
	CU_ASSERT_EQUAL(rte_be_to_cpu_16(ah->arp_opcode), RTE_ARP_OP_REPLY);
	CU_ASSERT_EQUAL(rte_be_to_cpu_32(ah->arp_data.arp_sip), US);
	CU_ASSERT_EQUAL(rte_be_to_cpu_32(ah->arp_data.arp_tip), PEER);
	CU_ASSERT_TRUE(rte_is_same_ether_addr(&ah->arp_data.arp_sha, &port->mac));
	rte_pktmbuf_free_bulk(out, n);
}

static void test_arp_other_target_ignored(void)
{
	struct rte_mbuf *out[4];
	inject(arp_frame(RTE_ARP_OP_REQUEST, PEER, 0x0a4d0063));
	CU_ASSERT_EQUAL(poll_out(out, 4), 0);
}

static void test_arp_malformed_counted(void)
{
	struct net_stats before, after;
	net_stack_get_stats(st, &before);
	struct rte_mbuf *m = arp_frame(RTE_ARP_OP_REQUEST, PEER, US);
	struct rte_arp_hdr *ah =
		rte_pktmbuf_mtod_offset(m, struct rte_arp_hdr *, RTE_ETHER_HDR_LEN);
	ah->arp_hlen = 8;
	inject(m);
	inject(frame(&port->mac, RTE_ETHER_TYPE_ARP, "ab", 2)); /* truncated */
	m = arp_frame(7, PEER, US);				/* unknown opcode */
	inject(m);
	drain();
	net_stack_get_stats(st, &after);
	CU_ASSERT_EQUAL(after.arp_bad - before.arp_bad, 3);
}

/*
 * One poll reads a port's bursts while they come back full, up to
 * NET_RX_BURSTS of them (port.c, net_port_rx): 40 frames go in one poll,
 * 200 in two (128, then 72).
 */
static void test_rx_budget_per_poll(void)
{
	struct net_stats a, b;
	struct rte_mbuf *out[4];
	const unsigned budget = NET_RX_BURSTS * NET_BURST;
	CU_ASSERT_TRUE_FATAL(budget < 200);
	for (unsigned round = 0; round < 2; round++) {
		unsigned total = round == 0 ? 40 : 200;
		for (unsigned i = 0; i < total; i++)
			inject(frame(&port->mac, 0x88b5, "rx", 2)); /* local experimental type */
		net_stack_get_stats(st, &b);
		CU_ASSERT_EQUAL(poll_out(out, 4), 0);
		net_stack_get_stats(st, &a);
		unsigned first = total < budget ? total : budget;
		CU_ASSERT_EQUAL(a.rx_pkts - b.rx_pkts, first);
		CU_ASSERT_EQUAL(a.eth_unknown_type - b.eth_unknown_type, first);
		CU_ASSERT_EQUAL(rte_ring_count(rx_ring), total - first);
		CU_ASSERT_EQUAL(poll_out(out, 4), 0);
		net_stack_get_stats(st, &a);
		CU_ASSERT_EQUAL(a.rx_pkts - b.rx_pkts, total);
		CU_ASSERT_EQUAL(rte_ring_count(rx_ring), 0);
	}
}

static void test_icmp_echo(void)
{
	learn_peer();
	uint8_t icmp[64], pkt[128];
	struct rte_icmp_hdr *ih = (struct rte_icmp_hdr *)icmp;
	memset(icmp, 0x5a, sizeof(icmp));
	ih->icmp_type = RTE_IP_ICMP_ECHO_REQUEST;
	ih->icmp_code = 0;
	ih->icmp_ident = rte_cpu_to_be_16(77);
	ih->icmp_seq_nb = rte_cpu_to_be_16(3);
	ih->icmp_cksum = 0;
	ih->icmp_cksum = (uint16_t)~rte_raw_cksum(icmp, sizeof(icmp));
	size_t len = ipv4(pkt, PEER, US, IPPROTO_ICMP, icmp, sizeof(icmp));
	inject(frame(&port->mac, RTE_ETHER_TYPE_IPV4, pkt, len));
	struct rte_mbuf *out[4];
	unsigned n = poll_out(out, 4);
	CU_ASSERT_EQUAL_FATAL(n, 1);
	const struct rte_ipv4_hdr *ip = as_ip(out[0]);
	CU_ASSERT_EQUAL(rte_be_to_cpu_32(ip->dst_addr), PEER);
	CU_ASSERT_EQUAL(rte_be_to_cpu_32(ip->src_addr), US);
	CU_ASSERT_EQUAL(rte_raw_cksum(ip, sizeof(*ip)), 0xffff);
	const uint8_t *reply = (const uint8_t *)(ip + 1);
	CU_ASSERT_EQUAL(reply[0], RTE_IP_ICMP_ECHO_REPLY);
	CU_ASSERT_EQUAL(rte_raw_cksum(reply, sizeof(icmp)), 0xffff);
	CU_ASSERT_EQUAL(memcmp(reply + 4, icmp + 4, sizeof(icmp) - 4), 0);
	rte_pktmbuf_free_bulk(out, n);
}

static void test_ipv4_bad_input_counted(void)
{
	uint8_t l4[8] = {0}, pkt[64];
	struct net_stats b, a;
	net_stack_get_stats(st, &b);

	size_t len = ipv4(pkt, PEER, US, IPPROTO_UDP, l4, sizeof(l4));
	pkt[10] ^= 1; /* header checksum */
	inject(frame(&port->mac, RTE_ETHER_TYPE_IPV4, pkt, len));

	len = ipv4(pkt, PEER, US, IPPROTO_UDP, l4, sizeof(l4));
	((struct rte_ipv4_hdr *)pkt)->total_length = rte_cpu_to_be_16(200); /* > frame */
	((struct rte_ipv4_hdr *)pkt)->hdr_checksum = 0;
	((struct rte_ipv4_hdr *)pkt)->hdr_checksum = rte_ipv4_cksum((struct rte_ipv4_hdr *)pkt);
	inject(frame(&port->mac, RTE_ETHER_TYPE_IPV4, pkt, len));

	len = ipv4(pkt, PEER, US, IPPROTO_UDP, l4, sizeof(l4));
	((struct rte_ipv4_hdr *)pkt)->fragment_offset = rte_cpu_to_be_16(RTE_IPV4_HDR_MF_FLAG);
	((struct rte_ipv4_hdr *)pkt)->hdr_checksum = 0;
	((struct rte_ipv4_hdr *)pkt)->hdr_checksum = rte_ipv4_cksum((struct rte_ipv4_hdr *)pkt);
	inject(frame(&port->mac, RTE_ETHER_TYPE_IPV4, pkt, len));

	len = ipv4(pkt, PEER, 0x0a4d0009, IPPROTO_UDP, l4, sizeof(l4)); /* not us */
	inject(frame(&port->mac, RTE_ETHER_TYPE_IPV4, pkt, len));

	pkt[0] = 0x65; /* version 6 */
	inject(frame(&port->mac, RTE_ETHER_TYPE_IPV4, pkt, len));
	inject(frame(&port->mac, RTE_ETHER_TYPE_IPV4, pkt, 10)); /* runt */

	static const struct rte_ether_addr other = {{0x02, 9, 9, 9, 9, 9}};
	len = ipv4(pkt, PEER, US, IPPROTO_UDP, l4, sizeof(l4));
	inject(frame(&other, RTE_ETHER_TYPE_IPV4, pkt, len)); /* not our MAC */
	inject(frame(&port->mac, 0x86dd, pkt, len));	      /* IPv6: unknown type */
	drain();
	net_stack_get_stats(st, &a);
	CU_ASSERT_EQUAL(a.ip_bad_cksum - b.ip_bad_cksum, 1);
	CU_ASSERT_EQUAL(a.ip_bad_len - b.ip_bad_len, 1);
	CU_ASSERT_EQUAL(a.ip_frags - b.ip_frags, 1);
	CU_ASSERT_EQUAL(a.ip_not_us - b.ip_not_us, 1);
	CU_ASSERT_EQUAL(a.ip_bad_header - b.ip_bad_header, 2);
	CU_ASSERT_EQUAL(a.eth_not_us - b.eth_not_us, 1);
	CU_ASSERT_EQUAL(a.eth_unknown_type - b.eth_unknown_type, 1);
}

static unsigned udp_got;
static uint8_t udp_data[64];
static void udp_cb(void *ctx, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
		   const uint8_t *data, size_t len)
{
	(void)ctx;
	CU_ASSERT_EQUAL(src, PEER);
	CU_ASSERT_EQUAL(sport, 5353);
	CU_ASSERT_EQUAL(dst, US);
	CU_ASSERT_EQUAL(dport, 53);
	if (len <= sizeof(udp_data))
		memcpy(udp_data, data, len);
	udp_got++;
}

static struct rte_mbuf *udp_frame(uint16_t dport, const char *text, bool bad_cksum)
{
	uint8_t l4[128], pkt[160];
	size_t n = strlen(text);
	struct rte_udp_hdr *uh = (struct rte_udp_hdr *)l4;
	uh->src_port = rte_cpu_to_be_16(5353);
	uh->dst_port = rte_cpu_to_be_16(dport);
	uh->dgram_len = rte_cpu_to_be_16((uint16_t)(sizeof(*uh) + n));
	uh->dgram_cksum = 0;
	memcpy(uh + 1, text, n);
	size_t len = ipv4(pkt, PEER, US, IPPROTO_UDP, l4, sizeof(*uh) + n);
	struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)pkt;
	struct rte_udp_hdr *puh = (struct rte_udp_hdr *)(ip + 1);
	puh->dgram_cksum = rte_ipv4_udptcp_cksum(ip, puh);
	if (bad_cksum)
		puh->dgram_cksum ^= 0x0101;
	return frame(&port->mac, RTE_ETHER_TYPE_IPV4, pkt, len);
}

static void test_udp(void)
{
	struct net_stats b, a;
	CU_ASSERT_EQUAL(udp_bind(st, 53, udp_cb, NULL), 0);
	CU_ASSERT_EQUAL(udp_bind(st, 53, udp_cb, NULL), -EADDRINUSE);
	net_stack_get_stats(st, &b);
	inject(udp_frame(53, "hello", false));
	inject(udp_frame(54, "nobody", false));
	inject(udp_frame(53, "corrupt", true));
	drain();
	net_stack_get_stats(st, &a);
	CU_ASSERT_EQUAL(udp_got, 1);
	CU_ASSERT_EQUAL(memcmp(udp_data, "hello", 5), 0);
	CU_ASSERT_EQUAL(a.udp_no_port - b.udp_no_port, 1);
	CU_ASSERT_EQUAL(a.l4_bad_cksum - b.l4_bad_cksum, 1);

	/* Sending: a checksummed datagram to the (known) peer. */
	learn_peer();
	CU_ASSERT_EQUAL(udp_send(st, 0, 53, PEER, 5353, "reply", 5), 0);
	struct rte_mbuf *out[4];
	unsigned n = poll_out(out, 4);
	CU_ASSERT_EQUAL_FATAL(n, 1);
	const struct rte_ipv4_hdr *ip = as_ip(out[0]);
	CU_ASSERT_EQUAL(ip->next_proto_id, IPPROTO_UDP);
	CU_ASSERT_EQUAL(rte_ipv4_udptcp_cksum_verify(ip, ip + 1), 0);
	rte_pktmbuf_free_bulk(out, n);
	CU_ASSERT_EQUAL(udp_unbind(st, 53), 0);
}

static void test_arp_resolution_and_pending(void)
{
	struct net_stats b, a;
	struct rte_mbuf *out[64];
	net_stack_get_stats(st, &b);
	/* Off-link destination: next hop is the gateway, which we must resolve. */
	uint32_t gw_only = 0x0a4d00fe;
	port->gateway = gw_only;
	for (int i = 0; i < NET_ARP_PENDING + 4; i++)
		CU_ASSERT_EQUAL(udp_send(st, 0, 1000, FAR, 53, "q", 1), 0);
	unsigned n = poll_out(out, 64);
	CU_ASSERT_EQUAL_FATAL(n, 1); /* one ARP request, the datagrams wait */
	const struct rte_arp_hdr *ah = as_arp(out[0]);
	CU_ASSERT_EQUAL(rte_be_to_cpu_16(ah->arp_opcode), RTE_ARP_OP_REQUEST);
	CU_ASSERT_EQUAL(rte_be_to_cpu_32(ah->arp_data.arp_tip), gw_only);
	rte_pktmbuf_free_bulk(out, n);
	net_stack_get_stats(st, &a);
	CU_ASSERT_EQUAL(a.arp_pending_drops - b.arp_pending_drops, 4);
	/* Unanswered: two more requests a second apart, then the packets go. */
	for (int k = 0; k < 2; k++) {
		now += 1100000;
		n = poll_out(out, 64);
		CU_ASSERT_EQUAL(n, 1);
		rte_pktmbuf_free_bulk(out, n);
	}
	now += 1100000;
	n = poll_out(out, 64);
	CU_ASSERT_EQUAL(n, 0);
	net_stack_get_stats(st, &a);
	CU_ASSERT_EQUAL(a.arp_resolve_failed - b.arp_resolve_failed, 1);
	CU_ASSERT_EQUAL(a.arp_pending_drops - b.arp_pending_drops, 4 + NET_ARP_PENDING);

	/* Now answered: the held datagram leaves with the learned MAC. */
	CU_ASSERT_EQUAL(udp_send(st, 0, 1000, FAR, 53, "q", 1), 0);
	n = poll_out(out, 64);
	CU_ASSERT_EQUAL(n, 1);
	rte_pktmbuf_free_bulk(out, n);
	inject(arp_frame(RTE_ARP_OP_REPLY, gw_only, US));
	n = poll_out(out, 64);
	CU_ASSERT_EQUAL_FATAL(n, 1);
	const struct rte_ether_hdr *eh = rte_pktmbuf_mtod(out[0], const struct rte_ether_hdr *);
	CU_ASSERT_TRUE(rte_is_same_ether_addr(&eh->dst_addr, &peer_mac));
	CU_ASSERT_EQUAL(rte_be_to_cpu_32(as_ip(out[0])->dst_addr), FAR);
	rte_pktmbuf_free_bulk(out, n);
	port->gateway = PEER;
}

static void test_flow_owner_symmetric(void)
{
	/* The software hash must not depend on direction: both halves of a flow meet. */
	struct net_port fake = *port;
	fake.n_workers = 4;
	fake.reta_mask = NET_RETA_SIZE - 1;
	for (unsigned i = 0; i < NET_RETA_SIZE; i++)
		fake.reta[i] = i % 4;
	unsigned seen[4] = {0};
	for (uint16_t p = 10000; p < 12000; p++) {
		unsigned a = net_port_flow_owner(&fake, PEER, US, p, 25);
		unsigned b = net_port_flow_owner(&fake, US, PEER, 25, p);
		CU_ASSERT_EQUAL(a, b);
		seen[a]++;
	}
	for (unsigned w = 0; w < 4; w++)
		CU_ASSERT_TRUE(seen[w] > 300); /* spread over every worker */
}

static uint16_t udp_payload_index(struct rte_mbuf *m)
{
	uint16_t v;
	memcpy(&v,
	       rte_pktmbuf_mtod_offset(m, const uint8_t *,
				       RTE_ETHER_HDR_LEN + sizeof(struct rte_ipv4_hdr) +
					       sizeof(struct rte_udp_hdr)),
	       sizeof(v));
	return v;
}

/*
 * A burst to an unresolved next hop is held whole up to NET_ARP_PENDING and
 * leaves in order once the reply comes; over all next hops a core holds
 * NET_ARP_HELD packets and drops the oldest beyond (arp.c).
 */
static void test_arp_hold_limits(void)
{
	struct net_stats b, a;
	struct rte_mbuf *out[64];
	const unsigned hops = NET_ARP_HELD / NET_ARP_PENDING + 1; /* one next hop more than fits */
	const uint32_t first = 0x0a4d0010u;			  /* 10.77.0.16 on: on-link */
	unsigned n, requests = 0, got = 0;

	drain();
	net_stack_get_stats(st, &b);
	for (unsigned h = 0; h < hops; h++)
		for (uint16_t i = 0; i < NET_ARP_PENDING; i++)
			CU_ASSERT_EQUAL(udp_send(st, 0, 1000, first + h, 53, &i, sizeof(i)), 0);
	while ((n = poll_out(out, 64)) > 0) {
		for (unsigned k = 0; k < n; k++) {
			CU_ASSERT_EQUAL(
				rte_be_to_cpu_16(rte_pktmbuf_mtod(out[k], struct rte_ether_hdr *)
							 ->ether_type),
				RTE_ETHER_TYPE_ARP);
			requests++;
		}
		rte_pktmbuf_free_bulk(out, n);
	}
	CU_ASSERT_EQUAL(requests, hops); /* one request per next hop, the datagrams wait */
	net_stack_get_stats(st, &a);
	/* the oldest NET_ARP_PENDING: all of the first next hop's */
	CU_ASSERT_EQUAL(a.arp_pending_drops - b.arp_pending_drops, NET_ARP_PENDING);
	CU_ASSERT_EQUAL(sp->n_arp_held, NET_ARP_HELD);

	/* The second answers: its whole burst leaves, in order, to its address. */
	inject(arp_frame(RTE_ARP_OP_REPLY, first + 1, US));
	while ((n = poll_out(out, 64)) > 0) {
		for (unsigned k = 0; k < n; k++) {
			CU_ASSERT_EQUAL(rte_be_to_cpu_32(as_ip(out[k])->dst_addr), first + 1);
			CU_ASSERT_EQUAL(udp_payload_index(out[k]), got);
			got++;
		}
		rte_pktmbuf_free_bulk(out, n);
	}
	CU_ASSERT_EQUAL(got, NET_ARP_PENDING);
	CU_ASSERT_EQUAL(sp->n_arp_held, NET_ARP_HELD - NET_ARP_PENDING);
	/* The first answers: nothing of its burst is left. */
	inject(arp_frame(RTE_ARP_OP_REPLY, first, US));
	CU_ASSERT_EQUAL(poll_out(out, 64), 0);

	/* The others never answer: after the retries their packets are freed. */
	for (int k = 0; k < 3; k++) {
		now += 1100000;
		drain();
	}
	CU_ASSERT_EQUAL(sp->n_arp_held, 0);
	net_stack_get_stats(st, &a);
	CU_ASSERT_EQUAL(a.arp_resolve_failed - b.arp_resolve_failed, hops - 2);
	CU_ASSERT_EQUAL(a.arp_pending_drops - b.arp_pending_drops, (hops - 1) * NET_ARP_PENDING);
}

/* Fill the port's TX ring with a marker (the "NIC" is busy); returns how many. */
static unsigned fill_tx_ring(void *marker)
{
	unsigned n = 0;
	while (rte_ring_enqueue(tx_ring, marker) == 0)
		n++;
	return n;
}

static unsigned empty_tx_ring_of(void *marker)
{
	void *objs[64];
	unsigned n, total = 0, other = 0;
	while ((n = rte_ring_dequeue_burst(tx_ring, objs, 64, NULL)) > 0)
		for (unsigned i = 0; i < n; i++, total++)
			other += objs[i] != marker;
	CU_ASSERT_EQUAL(other, 0);
	return total;
}

/*
 * A full TX queue keeps the packets for the next flush, in order, up to
 * NET_TX_HOLD (counted in tx_held); beyond it the newest are dropped and
 * counted in tx_drops.
 */
static void test_tx_full_queue_holds_packets(void)
{
	static int marker;
	struct net_stats b, a;
	struct rte_mbuf *out[NET_TX_HOLD + 64];
	learn_peer();
	net_stack_get_stats(st, &b);
	unsigned filled = fill_tx_ring(&marker);
	CU_ASSERT_TRUE_FATAL(filled > 0);
	for (uint16_t i = 0; i < 100; i++)
		CU_ASSERT_EQUAL(udp_send(st, 0, 1000, PEER, 53, &i, sizeof(i)), 0);
	net_stack_poll(st, now);
	net_stack_poll(st, now); /* still full: held, not counted twice */
	net_stack_get_stats(st, &a);
	CU_ASSERT_EQUAL(a.tx_held - b.tx_held, 100);
	CU_ASSERT_EQUAL(a.tx_drops - b.tx_drops, 0);
	CU_ASSERT_EQUAL(net_stack_next_deadline(st), 0); /* the loop must not sleep on them */
	CU_ASSERT_EQUAL(empty_tx_ring_of(&marker), filled);
	unsigned n = poll_out(out, 128);
	CU_ASSERT_EQUAL_FATAL(n, 100);
	unsigned misordered = 0;
	for (unsigned i = 0; i < n; i++)
		misordered += udp_payload_index(out[i]) != i;
	CU_ASSERT_EQUAL(misordered, 0);
	rte_pktmbuf_free_bulk(out, n);
	CU_ASSERT_NOT_EQUAL(net_stack_next_deadline(st), 0);

	/* Past the bound: the oldest NET_TX_HOLD stay, the 40 newest are dropped. */
	net_stack_get_stats(st, &b);
	filled = fill_tx_ring(&marker);
	for (uint16_t i = 0; i < NET_TX_HOLD + 40; i++)
		CU_ASSERT_EQUAL(udp_send(st, 0, 1000, PEER, 53, &i, sizeof(i)), 0);
	net_stack_poll(st, now);
	net_stack_get_stats(st, &a);
	CU_ASSERT_EQUAL(a.tx_drops - b.tx_drops, 40);
	CU_ASSERT_EQUAL(a.tx_held - b.tx_held, NET_TX_HOLD); /* the dropped ones were never held */
	CU_ASSERT_EQUAL(empty_tx_ring_of(&marker), filled);
	n = poll_out(out, NET_TX_HOLD + 64);
	CU_ASSERT_EQUAL_FATAL(n, NET_TX_HOLD);
	misordered = 0;
	for (unsigned i = 0; i < n; i++)
		misordered += udp_payload_index(out[i]) != i;
	CU_ASSERT_EQUAL(misordered, 0);
	rte_pktmbuf_free_bulk(out, n);

	/* A queue that takes nothing for NET_TX_HOLD_US: what it holds is dropped. */
	net_stack_get_stats(st, &b);
	filled = fill_tx_ring(&marker);
	for (uint16_t i = 0; i < 10; i++)
		CU_ASSERT_EQUAL(udp_send(st, 0, 1000, PEER, 53, &i, sizeof(i)), 0);
	net_stack_poll(st, now);
	now += NET_TX_HOLD_US / 2;
	net_stack_poll(st, now);
	net_stack_get_stats(st, &a);
	CU_ASSERT_EQUAL(a.tx_drops - b.tx_drops, 0); /* not yet */
	CU_ASSERT_EQUAL(net_stack_next_deadline(st), 0);
	now += NET_TX_HOLD_US;
	net_stack_poll(st, now);
	net_stack_get_stats(st, &a);
	CU_ASSERT_EQUAL(a.tx_drops - b.tx_drops, 10);
	CU_ASSERT_NOT_EQUAL(net_stack_next_deadline(st), 0); /* the worker may sleep again */
	CU_ASSERT_EQUAL(empty_tx_ring_of(&marker), filled);
	CU_ASSERT_EQUAL(poll_out(out, 16), 0);
}

/*
 * TCP's send path hands IPv4 the header and the send ring's bytes in
 * pieces: every split of the payload, at even and odd offsets, gives the
 * same frame and a checksum that verifies.
 */
static void test_output_in_pieces(void)
{
	uint8_t hdr[20], data[1460];
	struct rte_mbuf *out[4];
	memset(hdr, 0, sizeof(hdr));
	hdr[1] = 25; /* sport, dport, data offset: a plausible TCP header */
	hdr[3] = 99;
	hdr[12] = 5 << 4;
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 131 + 7);
	learn_peer();
	unsigned bad = 0, frames = 0;
	static const size_t lens[] = {1, 2, 33, 64, 65, 1448, 1459, 1460}; /* 1460: the MTU */
	for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
		size_t len = lens[li];
		for (size_t k = 0; k <= len; k += (k < 70 ? 1 : 97)) {
			const struct net_piece p[3] = {
				{hdr, sizeof(hdr)}, {data, k}, {data + k, len - k}};
			CU_ASSERT_EQUAL(net_ipv4_output_v(sp, 0, PEER, IPPROTO_TCP, p, 3), 0);
			unsigned n = poll_out(out, 4);
			CU_ASSERT_EQUAL_FATAL(n, 1);
			const struct rte_ipv4_hdr *ip = as_ip(out[0]);
			const uint8_t *l4 = (const uint8_t *)(ip + 1);
			bad += rte_be_to_cpu_16(ip->total_length) !=
			       sizeof(*ip) + sizeof(hdr) + len;
			bad += rte_ipv4_udptcp_cksum_verify(ip, l4) != 0;
			bad += rte_raw_cksum(ip, sizeof(*ip)) != 0xffff; /* the IPv4 header's own */
			bad += ip->time_to_live != 64 || ip->next_proto_id != IPPROTO_TCP;
			bad += rte_be_to_cpu_32(ip->src_addr) != US ||
			       rte_be_to_cpu_32(ip->dst_addr) != PEER;
			bad += memcmp(l4 + sizeof(hdr), data, len) != 0;
			bad += memcmp(l4, hdr, 16) != 0; /* all but the checksum field */
			frames++;
			rte_pktmbuf_free_bulk(out, n);
		}
	}
	CU_ASSERT_EQUAL(bad, 0);
	CU_ASSERT_TRUE(frames > 300);
}

static int suite_init(void)
{
	char *argv[] = {"test_ipv4",	     "-l",	    "0",
			"--no-huge",	     "-m",	    "128",
			"--no-pci",	     "--no-shconf", "--no-telemetry",
			"--log-level=error", NULL};
	if (rte_eal_init(10, argv) < 0)
		return -1;
	pool = rte_pktmbuf_pool_create("test_pool", 2047, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
	rx_ring = rte_ring_create("rx", 1024, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
	tx_ring = rte_ring_create("tx", 1024, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
	if (pool == NULL || rx_ring == NULL || tx_ring == NULL)
		return -1;
	int pid = rte_eth_from_rings("net_ring_test", &rx_ring, 1, &tx_ring, 1, 0);
	if (pid < 0)
		return -1;
	struct net_port_conf pc = {
		.port_id = (uint16_t)pid, .addr = US, .prefix_len = 24, .gateway = PEER};
	char err[256];
	if (net_port_setup(&port, &pc, 1, pool, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	struct net_stack_conf sc = {.worker = 0,
				    .n_workers = 1,
				    .ports = &port,
				    .n_ports = 1,
				    .pool = pool,
				    .seed = 42};
	st = net_stack_create(&sc);
	if (st == NULL)
		return -1;
	sp = net_priv(st);
	return 0;
}

static int suite_clean(void)
{
	net_stack_destroy(st);
	return 0;
}

/* ---- two workers on one single-queue port: software dispatch ---------------- */

static struct rte_ring *d_rx, *d_tx;
static struct net_port *d_port;
static struct net_stack *d_st[2];

static void d_poll_all(void)
{
	for (int k = 0; k < 3; k++)
		for (int w = 0; w < 2; w++)
			net_stack_poll(d_st[w], now);
}

static unsigned d_out(struct rte_mbuf **out, unsigned max)
{
	d_poll_all();
	return rte_ring_dequeue_burst(d_tx, (void **)out, max, NULL);
}

static int dispatch_init(void)
{
	d_rx = rte_ring_create("drx", 1024, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
	d_tx = rte_ring_create("dtx", 1024, 0, 0); /* both workers transmit */
	struct rte_ring *txq[2] = {d_tx, d_tx};
	int pid = rte_eth_from_rings("net_ring_disp", &d_rx, 1, txq, 2, 0);
	if (d_rx == NULL || d_tx == NULL || pid < 0)
		return -1;
	struct net_port_conf pc = {
		.port_id = (uint16_t)pid, .addr = US, .prefix_len = 24, .gateway = PEER};
	char err[256];
	if (net_port_setup(&d_port, &pc, 2, pool, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	for (unsigned w = 0; w < 2; w++) {
		struct net_stack_conf sc = {.worker = w,
					    .n_workers = 2,
					    .ports = &d_port,
					    .n_ports = 1,
					    .pool = pool,
					    .seed = 7 + w};
		if ((d_st[w] = net_stack_create(&sc)) == NULL)
			return -1;
	}
	return 0;
}

static int dispatch_clean(void)
{
	net_stack_destroy(d_st[0]);
	net_stack_destroy(d_st[1]);
	return 0;
}

static void test_dispatch_arp_reaches_every_worker(void)
{
	struct rte_mbuf *out[16];
	CU_ASSERT_STRING_EQUAL(net_port_steering(d_port), "software");
	d_poll_all(); /* the stacks learn the clock */
	/* Worker 1 wants the peer: it asks by ARP; the reply arrives on worker 0's queue. */
	CU_ASSERT_EQUAL(udp_send(d_st[1], 0, 1000, PEER, 53, "w1", 2), 0);
	unsigned n = d_out(out, 16);
	CU_ASSERT_EQUAL_FATAL(n, 1);
	CU_ASSERT_EQUAL(rte_be_to_cpu_16(as_arp(out[0])->arp_opcode), RTE_ARP_OP_REQUEST);
	rte_pktmbuf_free_bulk(out, n);
	struct rte_mbuf *m = arp_frame(RTE_ARP_OP_REPLY, PEER, US);
	struct rte_ether_hdr *eh = rte_pktmbuf_mtod(m, struct rte_ether_hdr *);
	eh->dst_addr = d_port->mac;
	CU_ASSERT_EQUAL_FATAL(rte_ring_enqueue(d_rx, m), 0);
	n = d_out(out, 16);
	/* The datagram worker 1 held leaves now: the reply reached worker 1 too. */
	CU_ASSERT_EQUAL_FATAL(n, 1);
	CU_ASSERT_EQUAL(rte_be_to_cpu_32(as_ip(out[0])->dst_addr), PEER);
	rte_pktmbuf_free_bulk(out, n);
	/* Worker 0 learned it as well: its send needs no new request. */
	CU_ASSERT_EQUAL(udp_send(d_st[0], 0, 1001, PEER, 53, "w0", 2), 0);
	n = d_out(out, 16);
	CU_ASSERT_EQUAL_FATAL(n, 1);
	CU_ASSERT_EQUAL(as_ip(out[0])->next_proto_id, IPPROTO_UDP);
	rte_pktmbuf_free_bulk(out, n);
	/* An ARP request is answered once, not once per worker. */
	m = arp_frame(RTE_ARP_OP_REQUEST, PEER, US);
	CU_ASSERT_EQUAL_FATAL(rte_ring_enqueue(d_rx, m), 0);
	n = d_out(out, 16);
	CU_ASSERT_EQUAL(n, 1);
	rte_pktmbuf_free_bulk(out, n);
}

static unsigned d_udp_hits[2];
static void d_udp_cb(void *ctx, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
		     const uint8_t *data, size_t len)
{
	(void)src, (void)sport, (void)dst, (void)dport, (void)data, (void)len;
	d_udp_hits[(uintptr_t)ctx]++;
}

static void test_dispatch_flows_reach_their_owner(void)
{
	/* Every worker binds the same port; each datagram must land on the flow's owner. */
	CU_ASSERT_EQUAL(udp_bind(d_st[0], 5000, d_udp_cb, (void *)0), 0);
	CU_ASSERT_EQUAL(udp_bind(d_st[1], 5000, d_udp_cb, (void *)1), 0);
	unsigned want[2] = {0, 0};
	for (uint16_t sport = 20000; sport < 20200; sport++) {
		uint8_t l4[16], pkt[64];
		struct rte_udp_hdr *uh = (struct rte_udp_hdr *)l4;
		uh->src_port = rte_cpu_to_be_16(sport);
		uh->dst_port = rte_cpu_to_be_16(5000);
		uh->dgram_len = rte_cpu_to_be_16(sizeof(l4));
		uh->dgram_cksum = 0;
		memset(uh + 1, 'x', sizeof(l4) - sizeof(*uh));
		size_t len = ipv4(pkt, PEER, US, IPPROTO_UDP, l4, sizeof(l4));
		struct rte_mbuf *m = frame(&d_port->mac, RTE_ETHER_TYPE_IPV4, pkt, len);
		CU_ASSERT_EQUAL_FATAL(rte_ring_enqueue(d_rx, m), 0);
		want[net_port_flow_owner(d_port, PEER, US, sport, 5000)]++;
		d_poll_all();
	}
	CU_ASSERT_EQUAL(d_udp_hits[0], want[0]);
	CU_ASSERT_EQUAL(d_udp_hits[1], want[1]);
	CU_ASSERT_TRUE(want[0] > 50 && want[1] > 50);
}

static CU_TestInfo dispatch_tests[] = {
	{"ARP replies reach every worker, requests answered once",
	 test_dispatch_arp_reaches_every_worker},
	{"datagrams reach the owner of their flow", test_dispatch_flows_reach_their_owner},
	CU_TEST_INFO_NULL,
};

static CU_TestInfo tests[] = {
	{"ARP request for us is answered", test_arp_reply_to_request},
	{"ARP request for another address is ignored", test_arp_other_target_ignored},
	{"malformed ARP is counted", test_arp_malformed_counted},
	{"one poll reads up to NET_RX_BURSTS full bursts", test_rx_budget_per_poll},
	{"ICMP echo reply", test_icmp_echo},
	{"bad IPv4 input is dropped and counted", test_ipv4_bad_input_counted},
	{"UDP bind, deliver, checksum, send", test_udp},
	{"ARP resolution: held packets, retries, failure", test_arp_resolution_and_pending},
	{"ARP holds a whole burst per next hop, and a bounded total", test_arp_hold_limits},
	{"software RSS is symmetric and spreads flows", test_flow_owner_symmetric},
	{"a full TX queue holds packets in order, up to a bound", test_tx_full_queue_holds_packets},
	{"TCP output in pieces: one copy, checksum right at odd offsets", test_output_in_pieces},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"ipv4", suite_init, suite_clean, NULL, NULL, tests},
	{"dispatch", dispatch_init, dispatch_clean, NULL, NULL, dispatch_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}

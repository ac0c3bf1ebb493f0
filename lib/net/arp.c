/*
 * arp.c - ARP (RFC 826): replies for our addresses, a per-core cache with
 * expiry, and packets held while a next hop is being resolved.
 *
 * The cache is a 4-way set-associative table, so a lookup touches one cache
 * line pair and never scans.  A full set evicts its oldest valid entry;
 * entries still resolving are never evicted (their held packets would be
 * lost) and a set full of them is counted (arp_table_full) and the packet
 * dropped.  Each unresolved entry holds at most NET_ARP_PENDING packets
 * (oldest dropped, counted); after three unanswered requests a second
 * apart, its packets are dropped and counted (arp_resolve_failed).  Every
 * worker keeps its own cache: the dispatcher copies ARP frames to all.
 */
#include "stack_priv.h"

#include <string.h>

#include <rte_arp.h>
#include <rte_ethdev.h>

#define ARP_WAYS 4
#define ARP_SETS (NET_ARP_ENTRIES / ARP_WAYS)
#define ARP_RETRY_US 1000000u
#define ARP_TRIES 3

enum { ARP_FREE = 0, ARP_PENDING, ARP_VALID };

static inline struct net_arp_entry *arp_set(struct net_stack_priv *sp, uint32_t ip)
{
	uint32_t h = ip * 2654435761u;
	return &sp->arp[(h >> 16) % ARP_SETS * ARP_WAYS];
}

static struct net_arp_entry *arp_find(struct net_stack_priv *sp, uint32_t ip)
{
	struct net_arp_entry *set = arp_set(sp, ip);
	for (unsigned i = 0; i < ARP_WAYS; i++)
		if (set[i].state != ARP_FREE && set[i].ip == ip)
			return &set[i];
	return NULL;
}

static struct net_arp_entry *arp_alloc(struct net_stack_priv *sp, uint32_t ip)
{
	struct net_arp_entry *set = arp_set(sp, ip), *victim = NULL;
	for (unsigned i = 0; i < ARP_WAYS; i++) {
		if (set[i].state == ARP_FREE)
			return &set[i];
		if (set[i].state == ARP_VALID &&
		    (victim == NULL || set[i].expires_us < victim->expires_us))
			victim = &set[i];
	}
	if (victim == NULL)
		sp->stats.arp_table_full++;
	return victim;
}

static void arp_send(struct net_stack_priv *sp, struct net_port_ctx *pc, uint16_t op,
		     const struct rte_ether_addr *tha, uint32_t tip)
{
	struct rte_mbuf *m = rte_pktmbuf_alloc(sp->pool);
	if (m == NULL) {
		sp->stats.tx_nombuf++;
		return;
	}
	struct rte_ether_hdr *eh = (struct rte_ether_hdr *)rte_pktmbuf_append(
		m, sizeof(struct rte_ether_hdr) + sizeof(struct rte_arp_hdr));
	struct rte_arp_hdr *ah = (struct rte_arp_hdr *)(eh + 1);
	if (op == RTE_ARP_OP_REQUEST)
		memset(&eh->dst_addr, 0xff, RTE_ETHER_ADDR_LEN);
	else
		rte_ether_addr_copy(tha, &eh->dst_addr);
	rte_ether_addr_copy(&pc->port->mac, &eh->src_addr);
	eh->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_ARP);
	ah->arp_hardware = rte_cpu_to_be_16(RTE_ARP_HRD_ETHER);
	ah->arp_protocol = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
	ah->arp_hlen = RTE_ETHER_ADDR_LEN;
	ah->arp_plen = 4;
	ah->arp_opcode = rte_cpu_to_be_16(op);
	rte_ether_addr_copy(&pc->port->mac, &ah->arp_data.arp_sha);
	ah->arp_data.arp_sip = rte_cpu_to_be_32(pc->port->addr);
	if (op == RTE_ARP_OP_REQUEST)
		memset(&ah->arp_data.arp_tha, 0, RTE_ETHER_ADDR_LEN);
	else
		rte_ether_addr_copy(tha, &ah->arp_data.arp_tha);
	ah->arp_data.arp_tip = rte_cpu_to_be_32(tip);
	if (op == RTE_ARP_OP_REQUEST)
		sp->stats.arp_requests_out++;
	else
		sp->stats.arp_replies_out++;
	net_port_tx(sp, pc, m);
}

static void arp_release(struct net_stack_priv *sp, struct net_port_ctx *pc,
			struct net_arp_entry *e)
{
	for (unsigned i = 0; i < e->n_pending; i++) {
		struct rte_mbuf *m = e->pending[i];
		struct rte_ether_hdr *eh = rte_pktmbuf_mtod(m, struct rte_ether_hdr *);
		rte_ether_addr_copy(&e->mac, &eh->dst_addr);
		net_port_tx(sp, pc, m);
	}
	e->n_pending = 0;
}

static void arp_learn(struct net_stack_priv *sp, struct net_port_ctx *pc, uint32_t ip,
		      const struct rte_ether_addr *mac, bool create)
{
	struct net_arp_entry *e = arp_find(sp, ip);
	if (e == NULL) {
		if (!create || (e = arp_alloc(sp, ip)) == NULL)
			return;
		memset(e, 0, sizeof(*e));
		e->ip = ip;
	}
	rte_ether_addr_copy(mac, &e->mac);
	e->state = ARP_VALID;
	e->tries = 0;
	e->expires_us = sp->now_us + sp->arp_timeout_us;
	arp_release(sp, pc, e);
}

void net_arp_input(struct net_stack_priv *sp, struct net_port_ctx *pc, struct rte_mbuf *m)
{
	struct net_port *p = pc->port;
	sp->stats.arp_in++;
	if (rte_pktmbuf_data_len(m) < sizeof(struct rte_ether_hdr) + sizeof(struct rte_arp_hdr)) {
		sp->stats.arp_bad++;
		goto done;
	}
	const struct rte_arp_hdr *ah =
		rte_pktmbuf_mtod_offset(m, const struct rte_arp_hdr *, sizeof(struct rte_ether_hdr));
	if (ah->arp_hardware != rte_cpu_to_be_16(RTE_ARP_HRD_ETHER) ||
	    ah->arp_protocol != rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4) ||
	    ah->arp_hlen != RTE_ETHER_ADDR_LEN || ah->arp_plen != 4 ||
	    rte_is_multicast_ether_addr(&ah->arp_data.arp_sha)) {
		sp->stats.arp_bad++;
		goto done;
	}
	uint16_t op = rte_be_to_cpu_16(ah->arp_opcode);
	uint32_t sip = rte_be_to_cpu_32(ah->arp_data.arp_sip);
	uint32_t tip = rte_be_to_cpu_32(ah->arp_data.arp_tip);
	struct rte_ether_addr sha = ah->arp_data.arp_sha;
	if (op != RTE_ARP_OP_REQUEST && op != RTE_ARP_OP_REPLY) {
		sp->stats.arp_bad++;
		goto done;
	}
	/* RFC 826: update an existing entry; add one only if we are the target. */
	if (sip != 0 && sip != p->addr)
		arp_learn(sp, pc, sip, &sha, tip == p->addr);
	/*
	 * Only the worker that received the frame from the port answers: the
	 * others get copies to learn from, and must not reply again.
	 */
	if (op == RTE_ARP_OP_REQUEST && tip == p->addr && !sp->from_ring)
		arp_send(sp, pc, RTE_ARP_OP_REPLY, &sha, sip);
done:
	rte_pktmbuf_free(m);
}

void net_arp_output(struct net_stack_priv *sp, struct net_port_ctx *pc, uint32_t nh,
		    struct rte_mbuf *m)
{
	struct rte_ether_hdr *eh = rte_pktmbuf_mtod(m, struct rte_ether_hdr *);
	struct net_arp_entry *e = arp_find(sp, nh);

	if (e != NULL && e->state == ARP_VALID && e->expires_us > sp->now_us) {
		rte_ether_addr_copy(&e->mac, &eh->dst_addr);
		net_port_tx(sp, pc, m);
		return;
	}
	if (e == NULL) {
		if ((e = arp_alloc(sp, nh)) == NULL) {
			rte_pktmbuf_free(m);
			sp->stats.arp_pending_drops++;
			return;
		}
		memset(e, 0, sizeof(*e));
		e->ip = nh;
	}
	if (e->state != ARP_PENDING) {
		/* New or expired: resolve (again) now. */
		e->state = ARP_PENDING;
		e->tries = 1;
		e->n_pending = 0;
		e->expires_us = sp->now_us + ARP_RETRY_US;
		arp_send(sp, pc, RTE_ARP_OP_REQUEST, NULL, nh);
	}
	if (e->n_pending == NET_ARP_PENDING) {
		rte_pktmbuf_free(e->pending[0]);
		memmove(&e->pending[0], &e->pending[1], (NET_ARP_PENDING - 1) * sizeof(e->pending[0]));
		e->n_pending--;
		sp->stats.arp_pending_drops++;
	}
	e->pending[e->n_pending++] = m;
}

void net_arp_timers(struct net_stack_priv *sp)
{
	for (unsigned i = 0; i < NET_ARP_ENTRIES; i++) {
		struct net_arp_entry *e = &sp->arp[i];
		if (e->state != ARP_PENDING || e->expires_us > sp->now_us)
			continue;
		uint32_t nh_unused;
		struct net_port_ctx *pc = net_route(sp, e->ip, &nh_unused);
		if (e->tries >= ARP_TRIES || pc == NULL) {
			for (unsigned k = 0; k < e->n_pending; k++)
				rte_pktmbuf_free(e->pending[k]);
			sp->stats.arp_pending_drops += e->n_pending;
			sp->stats.arp_resolve_failed++;
			e->n_pending = 0;
			e->state = ARP_FREE;
			continue;
		}
		e->tries++;
		e->expires_us = sp->now_us + ARP_RETRY_US;
		arp_send(sp, pc, RTE_ARP_OP_REQUEST, NULL, e->ip);
	}
}

/*
 * arp.c - ARP (RFC 826): replies for our addresses, a per-core cache with
 * expiry, and packets held while a next hop is being resolved.
 *
 * The cache is a 4-way set-associative table, so a lookup touches one cache
 * line pair and never scans.  A full set evicts its oldest valid entry;
 * entries still resolving are never evicted (their held packets would be
 * lost) and a set full of them is counted (arp_table_full) and the packet
 * dropped.  After three unanswered requests a second apart, an entry's
 * packets are dropped and counted (arp_resolve_failed).  Every worker keeps
 * its own cache: the dispatcher copies ARP frames to all.
 *
 * Packets waiting for an address are held in one array per core, oldest
 * first: at most NET_ARP_PENDING (128) per next hop and NET_ARP_HELD (1024)
 * in all, the oldest dropped and counted beyond either (arp_pending_drops).
 * Linux holds about as many per neighbour (unres_qlen_bytes, 212992 bytes).
 * The first burst to a new next hop is often large: a relay that starts
 * under load answers hundreds of SYNs through one gateway, and a resolver
 * that starts cold sends hundreds of queries to one server; 16 per entry,
 * as this table held before, lost most of them to a retransmission timer.
 * Entries stay small (the table is looked up per packet); the held array
 * is walked only when an address resolves, fails, or a limit is hit.
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

/*
 * Take e's held packets out of the array, in their order: sent to e->mac
 * through pc, or freed and counted as dropped when pc is NULL.
 */
static void held_take(struct net_stack_priv *sp, struct net_port_ctx *pc, struct net_arp_entry *e)
{
	unsigned k = 0;

	if (e->n_pending == 0)
		return;
	for (unsigned i = 0; i < sp->n_arp_held; i++) {
		struct net_arp_held h = sp->arp_held[i];
		if (h.ip != e->ip) {
			sp->arp_held[k++] = h;
			continue;
		}
		if (pc == NULL) {
			rte_pktmbuf_free(h.m);
			sp->stats.arp_pending_drops++;
			continue;
		}
		struct rte_ether_hdr *eh = rte_pktmbuf_mtod(h.m, struct rte_ether_hdr *);
		rte_ether_addr_copy(&e->mac, &eh->dst_addr);
		net_port_tx(sp, pc, h.m);
	}
	sp->n_arp_held = k;
	e->n_pending = 0;
}

/* Drop the oldest held packet: of next hop ip, or of any when ip is 0. */
static void held_drop_oldest(struct net_stack_priv *sp, uint32_t ip)
{
	for (unsigned i = 0; i < sp->n_arp_held; i++) {
		struct net_arp_held *h = &sp->arp_held[i];
		if (ip != 0 && h->ip != ip)
			continue;
		struct net_arp_entry *e = arp_find(sp, h->ip);
		if (e != NULL && e->n_pending > 0)
			e->n_pending--;
		rte_pktmbuf_free(h->m);
		memmove(h, h + 1, (sp->n_arp_held - i - 1) * sizeof(*h));
		sp->n_arp_held--;
		sp->stats.arp_pending_drops++;
		return;
	}
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
	held_take(sp, pc, e);
}

void net_arp_input(struct net_stack_priv *sp, struct net_port_ctx *pc, struct rte_mbuf *m)
{
	struct net_port *p = pc->port;
	sp->stats.arp_in++;
	if (rte_pktmbuf_data_len(m) < sizeof(struct rte_ether_hdr) + sizeof(struct rte_arp_hdr)) {
		sp->stats.arp_bad++;
		goto done;
	}
	const struct rte_arp_hdr *ah = rte_pktmbuf_mtod_offset(m, const struct rte_arp_hdr *,
							       sizeof(struct rte_ether_hdr));
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
	if (e->n_pending >= NET_ARP_PENDING)
		held_drop_oldest(sp, nh);
	if (sp->n_arp_held == NET_ARP_HELD)
		held_drop_oldest(sp, 0);
	sp->arp_held[sp->n_arp_held++] = (struct net_arp_held){.ip = nh, .m = m};
	e->n_pending++;
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
			held_take(sp, NULL, e);
			sp->stats.arp_resolve_failed++;
			e->state = ARP_FREE;
			continue;
		}
		e->tries++;
		e->expires_us = sp->now_us + ARP_RETRY_US;
		arp_send(sp, pc, RTE_ARP_OP_REQUEST, NULL, e->ip);
	}
}

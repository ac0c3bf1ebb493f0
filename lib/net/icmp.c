/*
 * icmp.c - ICMP echo (RFC 792), rate limited.
 *
 * Echo requests to our address are answered with the same identifier,
 * sequence and data, at most ICMP_RATE replies a second per core (a token
 * bucket), so a ping flood cannot take the core.  Other ICMP messages are
 * counted; TCP does not act on them (RFC 5927 attacks).
 */
#include "stack_priv.h"

#include <string.h>

#include <rte_icmp.h>
#include <rte_ip.h>

#define ICMP_RATE 1000u

void net_icmp_input(struct net_stack_priv *sp, uint32_t src, uint32_t dst, const uint8_t *data,
		    size_t len)
{
	uint8_t reply[RTE_ETHER_MTU];
	sp->stats.icmp_in++;
	if (len < sizeof(struct rte_icmp_hdr) || rte_raw_cksum(data, len) != 0xffff) {
		sp->stats.icmp_bad++;
		return;
	}
	const struct rte_icmp_hdr *ih = (const struct rte_icmp_hdr *)data;
	if (ih->icmp_type != RTE_IP_ICMP_ECHO_REQUEST || ih->icmp_code != 0)
		return;
	/* Token bucket: refill ICMP_RATE per second, burst ICMP_RATE. */
	uint64_t elapsed = sp->now_us - sp->icmp_last_us;
	sp->icmp_last_us = sp->now_us;
	sp->icmp_tokens += elapsed * ICMP_RATE / 1000000u;
	if (sp->icmp_tokens > ICMP_RATE)
		sp->icmp_tokens = ICMP_RATE;
	if (sp->icmp_tokens == 0) {
		sp->stats.icmp_rate_limited++;
		return;
	}
	sp->icmp_tokens--;
	if (len > sizeof(reply) - sizeof(struct rte_ipv4_hdr))
		return;
	memcpy(reply, data, len);
	struct rte_icmp_hdr *rh = (struct rte_icmp_hdr *)reply;
	rh->icmp_type = RTE_IP_ICMP_ECHO_REPLY;
	rh->icmp_cksum = 0;
	rh->icmp_cksum = (uint16_t)~rte_raw_cksum(reply, len);
	if (net_ipv4_output(sp, dst, src, IPPROTO_ICMP, reply, len) == 0)
		sp->stats.icmp_echo_replies++;
}

/*
 * netjson.c - lib/net's counters as one JSON member, shared by mxgen and
 * mxsink: enough to tell a dead link from a slow peer in a results file.
 */
#include "netjson.h"

#include <inttypes.h>

void bench_json_net(FILE *f, struct net_stack *const *stacks, unsigned n)
{
	uint64_t rx = 0, tx = 0, drops = 0, arp_fail = 0, retrans = 0, rto = 0, estab = 0;
	for (unsigned i = 0; i < n; i++) {
		if (stacks[i] == NULL)
			continue;
		struct net_stats ns;
		net_stack_get_stats(stacks[i], &ns);
		const struct tcp_stats *ts = net_stack_tcp_stats(stacks[i]);
		rx += ns.rx_pkts, tx += ns.tx_pkts, drops += ns.tx_drops + ns.tx_nombuf;
		arp_fail += ns.arp_resolve_failed;
		retrans += ts->retransmits, rto += ts->rto_timeouts, estab += ts->conns_established;
	}
	fprintf(f,
		"  \"net\": {\"rx_pkts\": %" PRIu64 ", \"tx_pkts\": %" PRIu64
		", \"tx_drops\": %" PRIu64 ", \"arp_resolve_failed\": %" PRIu64
		", \"tcp_established\": %" PRIu64 ", \"tcp_retransmits\": %" PRIu64
		", \"tcp_rto_timeouts\": %" PRIu64 "},\n",
		rx, tx, drops, arp_fail, estab, retrans, rto);
}

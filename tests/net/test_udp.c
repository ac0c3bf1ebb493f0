/*
 * test_udp.c - UDP binds of lib/net: single ports and port ranges (one bind
 * for a resolver's thousands of source ports, RFC 5452), their limits and
 * errors, and source-port steering: on two workers sharing one single-queue
 * net_ring port (software dispatch), a reply to a port that
 * udp_port_steers_here() accepted reaches the worker that asked.
 */
#include "stack_priv.h"
#include "mx_test.h"

#include <string.h>

#include <rte_eal.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_ip.h>
#include <rte_udp.h>

#define US 0x0a4d0002u	  /* 10.77.0.2: the stack */
#define PEER 0x0a4d0001u  /* 10.77.0.1: a DNS server on the link */
#define PEER2 0x0a4d0009u /* 10.77.0.9: another one */
#define LO 20000
#define HI 28191

static struct rte_mempool *pool;
static const struct rte_ether_addr peer_mac = {{0x02, 0, 0, 0, 0, 0x01}};

/* A UDP datagram from src:sport to US:dport in an Ethernet frame for @mac. */
static struct rte_mbuf *udp_frame(const struct rte_ether_addr *mac, uint32_t src, uint16_t sport,
				  uint16_t dport, const char *text, size_t claim_len)
{
	uint8_t pkt[sizeof(struct rte_ipv4_hdr) + sizeof(struct rte_udp_hdr) + 64];
	size_t n = strlen(text);
	struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)pkt;
	struct rte_udp_hdr *uh = (struct rte_udp_hdr *)(ip + 1);
	memset(ip, 0, sizeof(*ip));
	ip->version_ihl = RTE_IPV4_VHL_DEF;
	ip->total_length = rte_cpu_to_be_16((uint16_t)(sizeof(*ip) + sizeof(*uh) + n));
	ip->time_to_live = 64;
	ip->next_proto_id = IPPROTO_UDP;
	ip->src_addr = rte_cpu_to_be_32(src);
	ip->dst_addr = rte_cpu_to_be_32(US);
	ip->hdr_checksum = rte_ipv4_cksum(ip);
	uh->src_port = rte_cpu_to_be_16(sport);
	uh->dst_port = rte_cpu_to_be_16(dport);
	uh->dgram_len = rte_cpu_to_be_16((uint16_t)(claim_len ? claim_len : sizeof(*uh) + n));
	uh->dgram_cksum = 0; /* none: allowed over IPv4 (RFC 768) */
	memcpy(uh + 1, text, n);

	struct rte_mbuf *m = rte_pktmbuf_alloc(pool);
	size_t len = sizeof(*ip) + sizeof(*uh) + n;
	struct rte_ether_hdr *eh =
		(struct rte_ether_hdr *)rte_pktmbuf_append(m, (uint16_t)(sizeof(*eh) + len));
	eh->dst_addr = *mac;
	eh->src_addr = peer_mac;
	eh->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
	memcpy(eh + 1, pkt, len);
	return m;
}

/* What the callbacks saw. */
static unsigned got[3];
static uint16_t last_dport, last_sport;
static char last_data[64];

static void on_udp(void *ctx, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
		   const uint8_t *data, size_t len)
{
	(void)src, (void)dst;
	got[(uintptr_t)ctx]++;
	last_dport = dport;
	last_sport = sport;
	memset(last_data, 0, sizeof(last_data));
	memcpy(last_data, data, len < sizeof(last_data) - 1 ? len : sizeof(last_data) - 1);
}

/* ---- one worker ------------------------------------------------------------ */

static struct rte_ring *rx_ring, *tx_ring;
static struct net_port *port;
static struct net_stack *st;

static void send_in(uint16_t dport, const char *text)
{
	CU_ASSERT_EQUAL_FATAL(
		rte_ring_enqueue(rx_ring, udp_frame(&port->mac, PEER, 53, dport, text, 0)), 0);
	net_stack_poll(st, 1000000);
}

static void test_range_delivers_every_port(void)
{
	struct net_stats a, b;
	memset(got, 0, sizeof(got));
	CU_ASSERT_EQUAL(udp_bind_range(st, LO, HI, on_udp, (void *)1), 0);
	net_stack_get_stats(st, &a);
	send_in(LO, "low");
	CU_ASSERT_EQUAL(got[1], 1);
	CU_ASSERT_EQUAL(last_dport, LO);
	CU_ASSERT_EQUAL(last_sport, 53);
	CU_ASSERT_STRING_EQUAL(last_data, "low");
	send_in(HI, "high");
	CU_ASSERT_EQUAL(got[1], 2);
	CU_ASSERT_EQUAL(last_dport, HI);
	send_in(24321, "middle");
	CU_ASSERT_EQUAL(got[1], 3);
	CU_ASSERT_STRING_EQUAL(last_data, "middle");
	/* Just outside: nobody's. */
	send_in(LO - 1, "below");
	send_in(HI + 1, "above");
	CU_ASSERT_EQUAL(got[1], 3);
	net_stack_get_stats(st, &b);
	CU_ASSERT_EQUAL(b.udp_no_port - a.udp_no_port, 2);
	CU_ASSERT_EQUAL(b.udp_in - a.udp_in, 5);
	CU_ASSERT_EQUAL(udp_unbind_range(st, LO, HI), 0);
	send_in(LO, "gone");
	CU_ASSERT_EQUAL(got[1], 3);
}

static void test_range_conflicts_and_errors(void)
{
	memset(got, 0, sizeof(got));
	CU_ASSERT_EQUAL(udp_bind_range(st, LO, HI, on_udp, (void *)1), 0);
	/* Any overlap is refused, single ports inside the range included. */
	CU_ASSERT_EQUAL(udp_bind_range(st, LO, HI, on_udp, (void *)2), -EADDRINUSE);
	CU_ASSERT_EQUAL(udp_bind_range(st, HI, HI + 10, on_udp, (void *)2), -EADDRINUSE);
	CU_ASSERT_EQUAL(udp_bind_range(st, LO - 10, LO, on_udp, (void *)2), -EADDRINUSE);
	CU_ASSERT_EQUAL(udp_bind(st, 25000, on_udp, (void *)2), -EADDRINUSE);
	/* Bad arguments. */
	CU_ASSERT_EQUAL(udp_bind_range(st, 100, 99, on_udp, NULL), -EINVAL);
	CU_ASSERT_EQUAL(udp_bind_range(st, 0, 10, on_udp, NULL), -EINVAL);
	CU_ASSERT_EQUAL(udp_bind(st, 53, NULL, NULL), -EINVAL);
	/* Neighbours are fine, and each port goes to its own bind. */
	CU_ASSERT_EQUAL(udp_bind(st, HI + 1, on_udp, (void *)2), 0);
	send_in(HI + 1, "neighbour");
	send_in(HI, "range");
	CU_ASSERT_EQUAL(got[2], 1);
	CU_ASSERT_EQUAL(got[1], 1);
	/* Unbind names the bind exactly: a part of the range is not a bind. */
	CU_ASSERT_EQUAL(udp_unbind_range(st, LO, LO + 5), -ENOENT);
	CU_ASSERT_EQUAL(udp_unbind(st, LO + 1), -ENOENT);
	CU_ASSERT_EQUAL(udp_unbind(st, LO), -ENOENT);
	CU_ASSERT_EQUAL(udp_unbind_range(st, LO, HI), 0);
	CU_ASSERT_EQUAL(udp_unbind_range(st, LO, HI), -ENOENT);
	CU_ASSERT_EQUAL(udp_unbind(st, HI + 1), 0);
	CU_ASSERT_EQUAL(udp_unbind(st, 1), -ENOENT);
}

static void test_bind_limit(void)
{
	/* 64 binds per core, a range counting as one; a freed slot is reused. */
	unsigned ok = 0;
	for (unsigned i = 0; i < NET_UDP_BINDS; i++)
		if (udp_bind_range(st, (uint16_t)(1000 + 100 * i), (uint16_t)(1000 + 100 * i + 49),
				   on_udp, NULL) == 0)
			ok++;
	CU_ASSERT_EQUAL(ok, NET_UDP_BINDS);
	CU_ASSERT_EQUAL(udp_bind(st, 60000, on_udp, NULL), -ENOSPC);
	CU_ASSERT_EQUAL(udp_unbind_range(st, 1000 + 100 * 7, 1000 + 100 * 7 + 49), 0);
	CU_ASSERT_EQUAL(udp_bind(st, 60000, on_udp, (void *)2), 0);
	memset(got, 0, sizeof(got));
	send_in(60000, "reused");
	send_in(1000 + 100 * 7 + 3, "freed");
	send_in(1000 + 100 * 9 + 49, "kept");
	CU_ASSERT_EQUAL(got[2], 1);
	CU_ASSERT_EQUAL(got[0], 1);
	CU_ASSERT_EQUAL(udp_unbind(st, 60000), 0);
	for (unsigned i = 0; i < NET_UDP_BINDS; i++)
		if (i != 7)
			CU_ASSERT_EQUAL(udp_unbind_range(st, (uint16_t)(1000 + 100 * i),
							 (uint16_t)(1000 + 100 * i + 49)),
					0);
}

static void test_bad_length_counted(void)
{
	struct net_stats a, b;
	memset(got, 0, sizeof(got));
	CU_ASSERT_EQUAL(udp_bind(st, 5353, on_udp, (void *)1), 0);
	net_stack_get_stats(st, &a);
	/* UDP length past the datagram, and shorter than the header. */
	CU_ASSERT_EQUAL_FATAL(
		rte_ring_enqueue(rx_ring, udp_frame(&port->mac, PEER, 53, 5353, "abcd", 200)), 0);
	CU_ASSERT_EQUAL_FATAL(
		rte_ring_enqueue(rx_ring, udp_frame(&port->mac, PEER, 53, 5353, "abcd", 4)), 0);
	net_stack_poll(st, 1000000);
	net_stack_get_stats(st, &b);
	CU_ASSERT_EQUAL(got[1], 0);
	CU_ASSERT_EQUAL(b.udp_bad - a.udp_bad, 2);
	CU_ASSERT_EQUAL(udp_unbind(st, 5353), 0);
}

static void test_single_worker_always_steers_here(void)
{
	for (uint16_t p = LO; p < LO + 500; p++)
		CU_ASSERT_TRUE(udp_port_steers_here(st, p, PEER, 53));
}

static int eal_init(void)
{
	char *argv[] = {"test_udp",
			"-l",
			"0",
			"--no-huge",
			"-m",
			"128",
			"--no-pci",
			"--no-shconf",
			"--no-telemetry",
			"--log-level=error",
			"--file-prefix=test_udp",
			NULL};
	if (rte_eal_init(11, argv) < 0)
		return -1;
	pool = rte_pktmbuf_pool_create("udp_pool", 2047, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
	return pool == NULL ? -1 : 0;
}

static int one_init(void)
{
	if (eal_init() != 0)
		return -1;
	rx_ring = rte_ring_create("urx", 1024, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
	tx_ring = rte_ring_create("utx", 1024, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
	if (rx_ring == NULL || tx_ring == NULL)
		return -1;
	int pid = rte_eth_from_rings("net_ring_udp", &rx_ring, 1, &tx_ring, 1, 0);
	if (pid < 0)
		return -1;
	struct net_port_conf pc = {
		.port_id = (uint16_t)pid, .addr = US, .prefix_len = 24, .gateway = PEER};
	char err[256];
	if (net_port_setup(&port, &pc, 1, pool, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	struct net_stack_conf sc = {
		.worker = 0, .n_workers = 1, .ports = &port, .n_ports = 1, .pool = pool, .seed = 3};
	st = net_stack_create(&sc);
	return st == NULL ? -1 : 0;
}

static int one_clean(void)
{
	net_stack_destroy(st);
	return 0;
}

/* ---- two workers on one single-queue port: replies steer to the asker ---- */

static struct rte_ring *d_rx, *d_tx;
static struct net_port *d_port;
static struct net_stack *d_st[2];

static int two_init(void)
{
	d_rx = rte_ring_create("udrx", 4096, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
	d_tx = rte_ring_create("udtx", 1024, 0, 0);
	struct rte_ring *txq[2] = {d_tx, d_tx};
	int pid = rte_eth_from_rings("net_ring_udp2", &d_rx, 1, txq, 2, 0);
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
					    .seed = 11 + w};
		if ((d_st[w] = net_stack_create(&sc)) == NULL)
			return -1;
	}
	return 0;
}

static int two_clean(void)
{
	net_stack_destroy(d_st[0]);
	net_stack_destroy(d_st[1]);
	return 0;
}

static void d_poll_all(void)
{
	for (int k = 0; k < 3; k++)
		for (int w = 0; w < 2; w++)
			net_stack_poll(d_st[w], 1000000);
}

static void test_two_workers_replies_reach_asker(void)
{
	static const uint32_t servers[2] = {PEER, PEER2};
	CU_ASSERT_STRING_EQUAL(net_port_steering(d_port), "software");
	/* Both workers bind the same range, as the relay's resolvers do. */
	CU_ASSERT_EQUAL(udp_bind_range(d_st[0], LO, HI, on_udp, (void *)0), 0);
	CU_ASSERT_EQUAL(udp_bind_range(d_st[1], LO, HI, on_udp, (void *)1), 0);
	for (unsigned s = 0; s < 2; s++) {
		unsigned mine[2] = {0, 0}, sent[2] = {0, 0};
		memset(got, 0, sizeof(got));
		for (uint32_t p = LO; p <= HI; p++) {
			bool w0 = udp_port_steers_here(d_st[0], (uint16_t)p, servers[s], 53);
			bool w1 = udp_port_steers_here(d_st[1], (uint16_t)p, servers[s], 53);
			CU_ASSERT_TRUE(w0 != w1); /* every port belongs to exactly one worker */
			mine[w1 ? 1 : 0]++;
		}
		/* Each worker keeps thousands of the 8192 ports for this server. */
		CU_ASSERT_TRUE(mine[0] > 3000 && mine[1] > 3000);
		/* A reply to a port a worker may use reaches that worker. */
		for (uint32_t p = LO; p < LO + 400; p++) {
			unsigned w = udp_port_steers_here(d_st[1], (uint16_t)p, servers[s], 53);
			CU_ASSERT_EQUAL_FATAL(
				rte_ring_enqueue(d_rx, udp_frame(&d_port->mac, servers[s], 53,
								 (uint16_t)p, "answer", 0)),
				0);
			sent[w]++;
			if (p % 32 == 0)
				d_poll_all();
		}
		d_poll_all();
		CU_ASSERT_EQUAL(got[0], sent[0]);
		CU_ASSERT_EQUAL(got[1], sent[1]);
		CU_ASSERT_TRUE(sent[0] > 100 && sent[1] > 100);
	}
	CU_ASSERT_EQUAL(udp_unbind_range(d_st[0], LO, HI), 0);
	CU_ASSERT_EQUAL(udp_unbind_range(d_st[1], LO, HI), 0);
}

static CU_TestInfo one_tests[] = {
	{"a range bind delivers every port of it, none outside", test_range_delivers_every_port},
	{"overlaps refused, unbind exact, bad arguments", test_range_conflicts_and_errors},
	{"64 binds per core, freed slots reused", test_bind_limit},
	{"bad UDP lengths are counted, not delivered", test_bad_length_counted},
	{"one worker: every port steers here", test_single_worker_always_steers_here},
	CU_TEST_INFO_NULL,
};

static CU_TestInfo two_tests[] = {
	{"two workers: replies to steered source ports reach the asker",
	 test_two_workers_replies_reach_asker},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"udp", one_init, one_clean, NULL, NULL, one_tests},
	{"udp_steering", two_init, two_clean, NULL, NULL, two_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}

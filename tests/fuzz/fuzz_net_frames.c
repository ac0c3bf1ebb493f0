/*
 * fuzz_net_frames.c - arbitrary Ethernet frames into a whole per-core stack
 * (Ethernet, ARP, IPv4, ICMP, UDP, TCP with a listener and a UDP binding),
 * through a net_ring port so replies really go out.  Each input is split
 * into frames by a 2-byte length prefix; the clock advances between frames
 * so timers run.  A frame that does not parse must be dropped and counted,
 * never crash, leak or read out of bounds.
 */
#include "stack_priv.h"

#include <stdlib.h>
#include <string.h>

#include <rte_eal.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>

static struct rte_mempool *pool;
static struct rte_ring *rx_ring, *tx_ring;
static struct net_stack *st;
static uint64_t now = 1000000;

static size_t on_data(struct tcp_conn *c, void *user, const uint8_t *data, size_t len)
{
	(void)user;
	if (len > 0 && data[0] == 'Q')
		tcp_close(c);
	else if (len > 0 && data[0] == 'A')
		tcp_abort(c);
	else
		tcp_send(c, data, len > 64 ? 64 : len);
	return len / 2; /* leave some unconsumed: flow control paths */
}

static void on_closed(struct tcp_conn *c, void *user, enum tcp_close_reason why)
{
	(void)c;
	(void)user;
	(void)why;
}

static const struct tcp_conn_ops ops = {.on_data = on_data, .on_closed = on_closed};

static int on_accept(struct tcp_conn *c, void *ctx)
{
	tcp_conn_set_ops(c, &ops, ctx);
	return 0;
}

static void on_udp(void *ctx, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport,
		   const uint8_t *data, size_t len)
{
	(void)ctx;
	(void)dst;
	if (len > 0)
		udp_send(st, 0, dport, src, sport, data, len);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	char *eal[] = {"fuzz", "-l", "0", "--no-huge", "-m", "128", "--no-pci", "--no-shconf",
		       "--no-telemetry", "--log-level=error", NULL};
	if (rte_eal_init(10, eal) < 0)
		abort();
	pool = rte_pktmbuf_pool_create("fuzz_pool", 4095, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, 0);
	rx_ring = rte_ring_create("frx", 1024, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
	tx_ring = rte_ring_create("ftx", 4096, 0, RING_F_SP_ENQ | RING_F_SC_DEQ);
	int pid = rte_eth_from_rings("net_ring_fuzz", &rx_ring, 1, &tx_ring, 1, 0);
	struct net_port *port;
	struct net_port_conf pc = {.port_id = (uint16_t)pid, .addr = 0x0a4d0002, .prefix_len = 24,
				   .gateway = 0x0a4d0001};
	char err[256];
	if (pool == NULL || pid < 0 || net_port_setup(&port, &pc, 1, pool, err, sizeof(err)) != 0)
		abort();
	struct tcp_conf tc;
	tcp_conf_defaults(&tc);
	tc.max_conns = 256;
	tc.time_wait_max = 64;
	tc.syn_backlog = 8;
	struct net_stack_conf sc = {.worker = 0, .n_workers = 1, .ports = &port, .n_ports = 1,
				    .pool = pool, .tcp = &tc, .seed = 1};
	st = net_stack_create(&sc);
	if (st == NULL || tcp_listen(st, 0, 25, on_accept, NULL) != 0 ||
	    udp_bind(st, 53, on_udp, NULL) != 0)
		abort();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = 0;
	while (off + 2 <= size) {
		size_t len = (size_t)data[off] << 8 | data[off + 1];
		off += 2;
		if (len > size - off)
			len = size - off;
		if (len > RTE_MBUF_DEFAULT_DATAROOM)
			len = RTE_MBUF_DEFAULT_DATAROOM;
		struct rte_mbuf *m = rte_pktmbuf_alloc(pool);
		if (m == NULL)
			break;
		char *p = rte_pktmbuf_append(m, (uint16_t)len);
		if (p == NULL) {
			rte_pktmbuf_free(m);
			break;
		}
		memcpy(p, data + off, len);
		off += len;
		if (rte_ring_enqueue(rx_ring, m) != 0)
			rte_pktmbuf_free(m);
		now += 50000;
		net_stack_poll(st, now);
		struct rte_mbuf *out[64];
		unsigned n;
		while ((n = rte_ring_dequeue_burst(tx_ring, (void **)out, 64, NULL)) > 0)
			rte_pktmbuf_free_bulk(out, n);
	}
	return 0;
}

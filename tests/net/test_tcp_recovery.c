/*
 * test_tcp_recovery.c - loss recovery and flow control on crafted segments:
 * fast retransmit and NewReno (RFC 5681/6582), the RTO (RFC 6298: Karn,
 * backoff, giving up), zero-window probing, out-of-order reassembly and its
 * per-connection / per-core caps, and the timer wheel underneath.
 */
#include "mx_test.h"
#include "tcp_harness.h"
#include "tcp_int.h"

#define PP 40000
#define PEER_ISN 1000u

static struct th_stack *h;
static struct th_app app;
static uint8_t pattern[200000];

static void setup_conf(const struct tcp_conf *conf)
{
	h = th_new(conf, 21);
	memset(&app, 0, sizeof(app));
	for (size_t i = 0; i < sizeof(pattern); i++)
		pattern[i] = (uint8_t)(i * 31 + (i >> 9));
	CU_ASSERT_EQUAL_FATAL(tcp_listen(&h->st, 0, 25, th_accept, &app), 0);
}

static void setup(void)
{
	setup_conf(NULL);
}

static void teardown(void)
{
	th_free(h);
	th_app_free(&app);
}

static void peer(uint32_t seq, uint32_t ack, uint8_t flags, const void *data, size_t len)
{
	th_send(h, PP, 25, seq, ack, flags, 65535, TH_NOOPTS, data, len);
}

static uint32_t open_conn(void)
{
	struct th_opts o = {.mss = 1460, .wscale = -1};
	return th_passive_open(h, &app, PP, PEER_ISN, o);
}

/* Receiver model: bytes seen in captured data segments, by stream offset. */
struct rx_model {
	uint8_t buf[200000];
	uint8_t have[200000];
};

static struct rx_model rx;

static void rx_take(uint32_t iss, unsigned from, int skip)
{
	for (unsigned i = from; i < h->ncap; i++) {
		if ((int)i == skip)
			continue;
		struct th_seg *s = &h->cap[i];
		uint32_t off = s->seq - (iss + 1);
		for (uint32_t k = 0; k < s->len && off + k < sizeof(rx.buf); k++) {
			rx.buf[off + k] = s->data[k];
			rx.have[off + k] = 1;
		}
	}
}

static bool rx_complete(size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!rx.have[i] || rx.buf[i] != pattern[i])
			return false;
	return true;
}

/* Bug class: retransmission dropping data from the unacked queue. */
static void test_lost_middle_segment_fast_retransmit(void)
{
	setup();
	memset(&rx, 0, sizeof(rx));
	uint32_t iss = open_conn();
	struct tcp_conn *c = app.c;
	CU_ASSERT_EQUAL(tcp_send(c, pattern, 6 * 1460), 6 * 1460);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 6);
	rx_take(iss, 0, 2); /* segment 2 lost */
	unsigned n0 = h->ncap;
	peer(PEER_ISN + 1, iss + 1 + 1460, TH_ACK, NULL, 0);
	peer(PEER_ISN + 1, iss + 1 + 2920, TH_ACK, NULL, 0);
	for (int i = 0; i < 3; i++)
		peer(PEER_ISN + 1, iss + 1 + 2920, TH_ACK, NULL, 0);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->fast_retransmits, 1);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->dupacks_in, 3);
	CU_ASSERT_TRUE(c->in_recovery);
	/* The retransmission is the lost segment, with its own bytes. */
	bool found = false;
	for (unsigned i = n0; i < h->ncap; i++)
		if (h->cap[i].seq == iss + 1 + 2920 && h->cap[i].len == 1460)
			found = true;
	CU_ASSERT_TRUE(found);
	rx_take(iss, n0, -1);
	CU_ASSERT_TRUE(rx_complete(6 * 1460));
	CU_ASSERT_EQUAL(c->ssthresh, 2 * 1460); /* flight 4 segments / 2 */
	/* Full ACK ends recovery. */
	peer(PEER_ISN + 1, iss + 1 + 6 * 1460, TH_ACK, NULL, 0);
	CU_ASSERT_FALSE(c->in_recovery);
	CU_ASSERT_EQUAL(tcp_send_pending(c), 0);
	teardown();
}

/* Bug class: fast retransmit corrupting the RTO; the next loss is repaired. */
static void test_rto_sane_after_fast_recovery(void)
{
	setup();
	memset(&rx, 0, sizeof(rx));
	uint32_t iss = open_conn();
	struct tcp_conn *c = app.c;
	tcp_send(c, pattern, 6 * 1460);
	th_advance(h, 10000);
	peer(PEER_ISN + 1, iss + 1 + 1460, TH_ACK, NULL, 0);
	for (int i = 0; i < 3; i++)
		peer(PEER_ISN + 1, iss + 1 + 1460, TH_ACK, NULL, 0);
	CU_ASSERT_TRUE(c->in_recovery);
	th_advance(h, 10000);
	peer(PEER_ISN + 1, iss + 1 + 6 * 1460, TH_ACK, NULL, 0);
	CU_ASSERT_FALSE(c->in_recovery);
	CU_ASSERT_EQUAL(c->backoff, 0);
	CU_ASSERT(c->rto_us >= h->conf.rto_min_us && c->rto_us <= h->conf.rto_init_us);
	CU_ASSERT_FALSE(net_timer_armed(&c->rtx_timer));
	/* Next loss: a lone segment, no dupacks possible -> RTO repairs it. */
	th_clear(h);
	tcp_send(c, pattern + 6 * 1460, 1000);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	th_clear(h);
	uint64_t t0 = h->now;
	for (int i = 0; i < 2000 && h->ncap == 0; i++)
		th_advance(h, 1000);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT(h->now - t0 <= c->rto_us + 2000);
	CU_ASSERT_EQUAL(h->cap[0].seq, iss + 1 + 6 * 1460);
	CU_ASSERT_EQUAL(h->cap[0].len, 1000);
	CU_ASSERT_EQUAL(memcmp(h->cap[0].data, pattern + 6 * 1460, 1000), 0);
	peer(PEER_ISN + 1, iss + 1 + 6 * 1460 + 1000, TH_ACK, NULL, 0);
	CU_ASSERT_EQUAL(tcp_send_pending(c), 0);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->rto_timeouts, 1);
	teardown();
}

static void test_newreno_partial_ack(void)
{
	setup();
	uint32_t iss = open_conn();
	struct tcp_conn *c = app.c;
	tcp_send(c, pattern, 8 * 1460);
	/* Segments 1 and 4 lost; the others arrive. */
	peer(PEER_ISN + 1, iss + 1 + 1460, TH_ACK, NULL, 0);
	for (int i = 0; i < 3; i++)
		peer(PEER_ISN + 1, iss + 1 + 1460, TH_ACK, NULL, 0);
	CU_ASSERT_TRUE(c->in_recovery);
	th_clear(h);
	/* The retransmitted segment 1 fills the first hole: partial ACK up to 4. */
	peer(PEER_ISN + 1, iss + 1 + 4 * 1460, TH_ACK, NULL, 0);
	CU_ASSERT_TRUE(c->in_recovery);
	bool seg4 = false;
	for (unsigned i = 0; i < h->ncap; i++)
		if (h->cap[i].seq == iss + 1 + 4 * 1460 && h->cap[i].len == 1460 &&
		    !memcmp(h->cap[i].data, pattern + 4 * 1460, 1460))
			seg4 = true;
	CU_ASSERT_TRUE(seg4); /* at once, not after an RTO */
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->rto_timeouts, 0);
	peer(PEER_ISN + 1, iss + 1 + 8 * 1460, TH_ACK, NULL, 0);
	CU_ASSERT_FALSE(c->in_recovery);
	CU_ASSERT(c->cwnd <= c->ssthresh);
	teardown();
}

static void test_slow_start_and_avoidance(void)
{
	setup();
	uint32_t iss = open_conn();
	struct tcp_conn *c = app.c;
	CU_ASSERT_EQUAL(c->cwnd, 10 * 1460); /* RFC 6928 */
	tcp_send(c, pattern, 20 * 1460);
	CU_ASSERT_EQUAL(h->ncap, 10);
	peer(PEER_ISN + 1, iss + 1 + 1460, TH_ACK, NULL, 0);
	CU_ASSERT_EQUAL(c->cwnd, 11 * 1460);
	c->ssthresh = c->cwnd; /* now in congestion avoidance */
	uint32_t before = c->cwnd;
	peer(PEER_ISN + 1, iss + 1 + 2920, TH_ACK, NULL, 0);
	CU_ASSERT_EQUAL(c->cwnd, before + 1460 * 1460 / before);
	teardown();
}

static void test_rto_backoff_and_give_up(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.data_retries = 4;
	conf.max_conns = 8;
	conf.time_wait_max = 8;
	setup_conf(&conf);
	open_conn();
	tcp_send(app.c, "lost", 4);
	th_clear(h);
	uint64_t last = h->now;
	uint64_t gaps[8] = {0};
	unsigned ng = 0;
	for (int i = 0; i < 200000 && !app.closed; i++) {
		th_advance(h, 1000);
		if (h->ncap > ng && ng < 8) {
			gaps[ng++] = h->now - last;
			last = h->now;
		}
	}
	CU_ASSERT_EQUAL(app.closed, 1);
	CU_ASSERT_EQUAL(app.why, TCP_CLOSE_TIMEOUT);
	CU_ASSERT_EQUAL(ng, 5); /* 4 retransmissions + the RST */
	CU_ASSERT_TRUE(th_last(h)->flags & TH_RST);
	for (unsigned i = 1; i + 1 < ng; i++)
		CU_ASSERT(gaps[i] >= 2 * gaps[i - 1] - 2000 && gaps[i] <= 2 * gaps[i - 1] + 2000);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->timeouts_dropped, 1);
	teardown();
}

static void test_rtt_estimation_karn(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.rto_min_us = 100000;
	conf.max_conns = 8;
	conf.time_wait_max = 8;
	setup_conf(&conf);
	uint32_t iss = open_conn();
	struct tcp_conn *c = app.c;
	/* The handshake took 0 µs. */
	CU_ASSERT_EQUAL(c->srtt_us, 0);
	c->srtt_us = -1; /* forget it: measure 50 ms */
	tcp_send(c, "a", 1);
	th_advance(h, 50000);
	peer(PEER_ISN + 1, iss + 2, TH_ACK, NULL, 0);
	CU_ASSERT_EQUAL(c->srtt_us, 50000);
	CU_ASSERT_EQUAL(c->rttvar_us, 25000);
	CU_ASSERT_EQUAL(c->rto_us, 150000);
	/* Karn: an ACK for retransmitted data gives no sample. */
	tcp_send(c, "b", 1);
	th_advance(h, 152000); /* RTO: retransmitted */
	CU_ASSERT(tcp_get_stats(h->ts)->rto_timeouts >= 1);
	th_advance(h, 400000);
	peer(PEER_ISN + 1, iss + 3, TH_ACK, NULL, 0);
	CU_ASSERT_EQUAL(c->srtt_us, 50000);
	CU_ASSERT_EQUAL(c->backoff, 0);
	teardown();
}

/* Retransmission takes the original bytes even after more was queued. */
static void test_retransmit_from_unacked_queue(void)
{
	setup();
	uint32_t iss = open_conn();
	struct tcp_conn *c = app.c;
	tcp_send(c, "AAAA", 4);
	tcp_send(c, "BBBB", 4);
	th_clear(h);
	th_advance(h, 1100000);
	CU_ASSERT(h->ncap >= 1);
	CU_ASSERT_EQUAL(h->cap[0].seq, iss + 1);
	CU_ASSERT(h->cap[0].len >= 4);
	CU_ASSERT_EQUAL(memcmp(h->cap[0].data, "AAAA", 4), 0);
	peer(PEER_ISN + 1, iss + 5, TH_ACK, NULL, 0);
	CU_ASSERT_EQUAL(tcp_send_pending(c), 4);
	th_clear(h);
	th_advance(h, 1100000);
	CU_ASSERT(h->ncap >= 1);
	CU_ASSERT_EQUAL(h->cap[0].seq, iss + 5);
	CU_ASSERT_EQUAL(memcmp(h->cap[0].data, "BBBB", 4), 0);
	teardown();
}

static void test_zero_window_probe(void)
{
	setup();
	uint32_t iss = open_conn();
	struct tcp_conn *c = app.c;
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1, TH_ACK, 0, TH_NOOPTS, NULL, 0);
	CU_ASSERT_EQUAL(c->snd_wnd, 0);
	CU_ASSERT_EQUAL(tcp_send(c, pattern, 3000), 3000);
	CU_ASSERT_EQUAL(h->ncap, 0);
	uint64_t t[3];
	unsigned np = 0;
	for (int i = 0; i < 10000 && np < 3; i++) {
		th_advance(h, 1000);
		if (h->ncap > np) {
			t[np++] = h->now;
			struct th_seg *p = th_last(h);
			CU_ASSERT_EQUAL(p->len, 1);
			CU_ASSERT_EQUAL(p->seq, iss + 1);
			CU_ASSERT_EQUAL(p->data[0], pattern[0]);
			/* The peer still has no room. */
			th_send(h, PP, 25, PEER_ISN + 1, iss + 1, TH_ACK, 0, TH_NOOPTS, NULL, 0);
		}
	}
	CU_ASSERT_EQUAL(np, 3);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->zero_window_probes, 3);
	/* A peer that keeps answering is never given up on, even after more
	 * probes than data_retries. */
	for (int i = 0; i < 20; i++) {
		th_advance(h, 60000000);
		th_send(h, PP, 25, PEER_ISN + 1, iss + 1, TH_ACK, 0, TH_NOOPTS, NULL, 0);
	}
	CU_ASSERT_EQUAL(app.closed, 0);
	CU_ASSERT(tcp_get_stats(h->ts)->zero_window_probes >= 3 + 20);
	CU_ASSERT(t[2] - t[1] >= 2 * (t[1] - t[0]) - 2000); /* backoff */
	CU_ASSERT_EQUAL(app.closed, 0);
	/* The window opens: everything flows. */
	th_clear(h);
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1, TH_ACK, 65535, TH_NOOPTS, NULL, 0);
	uint32_t sent = 0;
	for (unsigned i = 0; i < h->ncap; i++)
		sent += h->cap[i].len;
	CU_ASSERT_EQUAL(sent, 3000);
	CU_ASSERT_FALSE(c->persist);
	/* A probe byte that the peer accepted is acknowledged normally too. */
	peer(PEER_ISN + 1, iss + 3001, TH_ACK, NULL, 0);
	CU_ASSERT_EQUAL(tcp_send_pending(c), 0);
	teardown();
}

static void test_probe_accepted_when_window_opened(void)
{
	setup();
	uint32_t iss = open_conn();
	struct tcp_conn *c = app.c;
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1, TH_ACK, 0, TH_NOOPTS, NULL, 0);
	tcp_send(c, "xyz", 3);
	th_clear(h);
	for (int i = 0; i < 3000 && h->ncap == 0; i++)
		th_advance(h, 1000);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	/* The window update was lost; the probe byte is accepted. */
	th_clear(h);
	th_send(h, PP, 25, PEER_ISN + 1, iss + 2, TH_ACK, 1000, TH_NOOPTS, NULL, 0);
	CU_ASSERT_EQUAL(tcp_send_pending(c), 2);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].seq, iss + 2);
	CU_ASSERT_EQUAL(memcmp(h->cap[0].data, "yz", 2), 0);
	teardown();
}

/*
 * A FIN in order while out-of-order data lies beyond it: nothing follows a
 * FIN, so the islands are dropped (before, one could be left starting at
 * the new rcv_nxt, holding reassembly memory forever: fuzz_tcp_input).
 */
static void test_fin_drops_islands(void)
{
	setup();
	uint32_t iss = open_conn();
	peer(PEER_ISN + 1 + 100, iss + 1, TH_ACK, pattern + 100, 50);
	CU_ASSERT_EQUAL(app.c->reass_count, 1);
	CU_ASSERT(h->ts->reass_global > 0);
	peer(PEER_ISN + 1, iss + 1, TH_ACK | TH_FIN, pattern, 10); /* data then FIN, at 11 */
	CU_ASSERT_EQUAL(app.rx_len, 10);
	CU_ASSERT_EQUAL(app.c->reass_count, 0);
	CU_ASSERT_EQUAL(app.c->reass_bytes, 0);
	CU_ASSERT_EQUAL(h->ts->reass_global, 0);
	teardown();
}

static void test_reassembly(void)
{
	setup();
	uint32_t iss = open_conn();
	/* Segments 3, 1, 2 (of 0..3) arrive first, then 0. */
	peer(PEER_ISN + 1 + 300, iss + 1, TH_ACK, pattern + 300, 100);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1); /* immediate duplicate ACK */
	CU_ASSERT_EQUAL(h->cap[0].ack, PEER_ISN + 1);
	peer(PEER_ISN + 1 + 100, iss + 1, TH_ACK, pattern + 100, 100);
	peer(PEER_ISN + 1 + 200, iss + 1, TH_ACK, pattern + 200, 100);
	CU_ASSERT_EQUAL(h->ncap, 3);
	CU_ASSERT_EQUAL(app.rx_len, 0);
	CU_ASSERT_EQUAL(app.c->reass_count, 1); /* merged into one island */
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->ooo_segs, 3);
	peer(PEER_ISN + 1, iss + 1, TH_ACK, pattern, 100);
	CU_ASSERT_EQUAL(app.rx_len, 400);
	CU_ASSERT_EQUAL(memcmp(app.rx, pattern, 400), 0);
	CU_ASSERT_EQUAL(app.c->reass_bytes, 0);
	CU_ASSERT_EQUAL(h->ts->reass_global, 0);
	th_poll(h); /* the gap filled: ACK at once (at this poll) */
	CU_ASSERT_EQUAL(th_last(h)->ack, PEER_ISN + 401);
	/* Overlapping and duplicate pieces. */
	peer(PEER_ISN + 451, iss + 1, TH_ACK, pattern + 450, 100);
	peer(PEER_ISN + 431, iss + 1, TH_ACK, pattern + 430, 50);
	peer(PEER_ISN + 351, iss + 1, TH_ACK, pattern + 350, 100); /* half old */
	CU_ASSERT_EQUAL(app.rx_len, 550);
	CU_ASSERT_EQUAL(memcmp(app.rx, pattern, 550), 0);
	teardown();
}

static void test_reassembly_conn_cap(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.reass_conn_bytes = 3000;
	conf.max_conns = 8;
	conf.time_wait_max = 8;
	setup_conf(&conf);
	uint32_t iss = open_conn();
	for (int i = 1; i <= 3; i++)
		peer(PEER_ISN + 1 + (uint32_t)i * 1000, iss + 1, TH_ACK, pattern + i * 1000, 1000);
	peer(PEER_ISN + 1 + 4000, iss + 1, TH_ACK, pattern + 4000, 1000);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->reass_conn_cap_hits, 1);
	CU_ASSERT_EQUAL(app.c->reass_bytes, 3000);
	peer(PEER_ISN + 1, iss + 1, TH_ACK, pattern, 1000);
	CU_ASSERT_EQUAL(app.rx_len, 4000);
	/* The dropped piece comes again and everything is right. */
	peer(PEER_ISN + 1 + 4000, iss + 1, TH_ACK, pattern + 4000, 1000);
	CU_ASSERT_EQUAL(app.rx_len, 5000);
	CU_ASSERT_EQUAL(memcmp(app.rx, pattern, 5000), 0);
	teardown();
}

static void test_reassembly_global_cap(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.reass_global_bytes = 1500;
	conf.max_conns = 8;
	conf.time_wait_max = 8;
	setup_conf(&conf);
	uint32_t iss = open_conn();
	struct th_app app2 = {0};
	struct tcp_conn *c1 = app.c;
	CU_ASSERT_EQUAL(tcp_unlisten(&h->st, 0, 25), 0);
	CU_ASSERT_EQUAL(tcp_listen(&h->st, 0, 25, th_accept, &app2), 0);
	uint32_t iss2 = th_passive_open(h, &app2, PP + 1, PEER_ISN,
					(struct th_opts){.mss = 1460, .wscale = -1});
	(void)c1;
	peer(PEER_ISN + 101, iss + 1, TH_ACK, pattern + 100, 1000);
	th_send(h, PP + 1, 25, PEER_ISN + 101, iss2 + 1, TH_ACK, 65535, TH_NOOPTS, pattern + 100,
		1000);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->reass_global_cap_hits, 1);
	CU_ASSERT_EQUAL(h->ts->reass_global, 1000);
	/* When the first connection's hole fills, the core's budget is free again. */
	peer(PEER_ISN + 1, iss + 1, TH_ACK, pattern, 100);
	CU_ASSERT_EQUAL(h->ts->reass_global, 0);
	th_send(h, PP + 1, 25, PEER_ISN + 101, iss2 + 1, TH_ACK, 65535, TH_NOOPTS, pattern + 100,
		1000);
	CU_ASSERT_EQUAL(h->ts->reass_global, 1000);
	th_send(h, PP + 1, 25, PEER_ISN + 1, iss2 + 1, TH_ACK, 65535, TH_NOOPTS, pattern, 100);
	CU_ASSERT_EQUAL_FATAL(app2.rx_len, 1100);
	CU_ASSERT_EQUAL(memcmp(app2.rx, pattern, 1100), 0);
	CU_ASSERT_EQUAL(app.rx_len, 1100);
	CU_ASSERT_EQUAL(h->ts->reass_global, 0);
	th_app_free(&app2);
	teardown();
}

static void test_reassembly_range_cap(void)
{
	setup();
	uint32_t iss = open_conn();
	/* One island more than kept: the last is refused and counted. */
	const int n = TCP_REASS_RANGES + 1;
	for (int i = 0; i < n; i++)
		peer(PEER_ISN + 1 + 100 + (uint32_t)i * 200, iss + 1, TH_ACK,
		     pattern + 100 + i * 200, 100);
	CU_ASSERT_EQUAL(app.c->reass_count, TCP_REASS_RANGES);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->reass_conn_cap_hits, 1);
	/* Fill everything in order: all correct. */
	for (int i = 0; i < 2 * n; i++)
		peer(PEER_ISN + 1 + (uint32_t)i * 100, iss + 1, TH_ACK, pattern + i * 100, 100);
	CU_ASSERT_EQUAL(app.rx_len, 200u * n);
	CU_ASSERT_EQUAL(memcmp(app.rx, pattern, 200u * n), 0);
	CU_ASSERT_EQUAL(app.c->reass_count, 0);
	teardown();
}

/* SACK (RFC 2018), receiver side: negotiated, blocks in the duplicate ACKs. */
static void test_sack_blocks(void)
{
	setup();
	struct th_opts o = {.mss = 1460, .wscale = -1, .ts = true, .tsval = 1, .sack_ok = true};
	th_clear(h);
	th_send(h, PP, 25, PEER_ISN, 0, TH_SYN, 65535, o, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_TRUE(h->cap[0].sack_ok);
	uint32_t iss = h->cap[0].seq;
	struct th_opts a = {.wscale = -1, .ts = true, .tsval = 2, .tsecr = h->cap[0].tsval};
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1, TH_ACK, 65535, a, NULL, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(app.c);
	CU_ASSERT_TRUE(app.c->sack_ok);
	th_clear(h);
	uint32_t base = PEER_ISN + 1;
	th_send(h, PP, 25, base + 1000, iss + 1, TH_ACK, 65535, a, pattern, 100);
	th_send(h, PP, 25, base + 3000, iss + 1, TH_ACK, 65535, a, pattern, 100);
	th_send(h, PP, 25, base + 2000, iss + 1, TH_ACK, 65535, a, pattern, 100);
	th_send(h, PP, 25, base + 4000, iss + 1, TH_ACK, 65535, a, pattern, 100);
	th_send(h, PP, 25, base + 1100, iss + 1, TH_ACK, 65535, a, pattern, 100);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 5);
	struct th_seg *d = &h->cap[0];
	CU_ASSERT_EQUAL(d->ack, base);
	CU_ASSERT_EQUAL(d->nsack, 1);
	CU_ASSERT_EQUAL(d->sack[0][0], base + 1000);
	CU_ASSERT_EQUAL(d->sack[0][1], base + 1100);
	d = &h->cap[4]; /* 4 islands, 3 blocks fit with timestamps */
	CU_ASSERT_EQUAL(d->nsack, 3);
	CU_ASSERT_EQUAL(d->sack[0][0], base + 1000); /* the latest arrival first */
	CU_ASSERT_EQUAL(d->sack[0][1], base + 1200);
	CU_ASSERT_EQUAL(d->sack[1][0], base + 4000);
	CU_ASSERT_EQUAL(d->sack[2][0], base + 3000);
	/* The first gap filled: the three remaining islands are reported. */
	th_clear(h);
	th_send(h, PP, 25, base, iss + 1, TH_ACK, 65535, a, pattern, 1000);
	th_poll(h);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].ack, base + 1200);
	CU_ASSERT_EQUAL(h->cap[0].nsack, 3);
	teardown();
}

/* A pure ACK's sequence number stays inside the peer's window even when
 * the peer shrank it below what we already sent (it dropped data). */
static void test_ack_seq_inside_peer_window(void)
{
	setup();
	uint32_t iss = open_conn();
	tcp_send(app.c, pattern, 10 * 1460);
	CU_ASSERT_EQUAL(app.c->snd_max, iss + 1 + 14600);
	th_clear(h);
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1 + 1460, TH_ACK, 1000, TH_NOOPTS, NULL, 0);
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1 + 1460, TH_ACK, 1000, TH_NOOPTS, "x", 1);
	th_advance(h, 50000);
	struct th_seg *a = th_last(h);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_EQUAL(a->len, 0);
	CU_ASSERT_EQUAL(a->ack, PEER_ISN + 2);
	CU_ASSERT_EQUAL(a->seq, iss + 1 + 1460 + 1000);
	teardown();
}

static void test_duplicate_segment_acked_at_once(void)
{
	setup();
	uint32_t iss = open_conn();
	peer(PEER_ISN + 1, iss + 1, TH_ACK, "abc", 3);
	th_clear(h);
	peer(PEER_ISN + 1, iss + 1, TH_ACK, "abc", 3);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].ack, PEER_ISN + 4);
	CU_ASSERT_EQUAL(app.rx_len, 3);
	teardown();
}

/* ---- the timer wheel -------------------------------------------------- */

static unsigned fired_order[64];
static unsigned nfired;
static struct net_timer_wheel wheel;
static struct net_timer tm[8];
static bool quiet;

static void on_fire(void *arg, struct net_timer *t)
{
	(void)arg;
	fired_order[nfired++] = t->kind;
	if (quiet)
		return;
	if (t->kind == 3) /* 3 and 4 share a slot: whichever fires cancels the other */
		net_timer_cancel(&wheel, &tm[4]);
	if (t->kind == 4)
		net_timer_cancel(&wheel, &tm[3]);
	if (t->kind == 5 && nfired < 10)
		net_timer_arm(&wheel, t, 0); /* "already due": next call, not now */
}

static void test_timer_wheel(void)
{
	net_timer_wheel_init(&wheel, 1000000);
	memset(tm, 0, sizeof(tm));
	nfired = 0;
	quiet = false;
	for (unsigned i = 0; i < 8; i++)
		tm[i].kind = (uint8_t)i;
	CU_ASSERT_EQUAL(net_timer_next(&wheel), UINT64_MAX);
	net_timer_arm(&wheel, &tm[1], 1000000 + 5000);
	net_timer_arm(&wheel, &tm[2], 1000000 + 10000000); /* beyond one revolution */
	net_timer_arm(&wheel, &tm[3], 1000000 + 3000);
	net_timer_arm(&wheel, &tm[4], 1000000 + 3000);
	net_timer_arm(&wheel, &tm[6], 1000000 + 7000);
	net_timer_cancel(&wheel, &tm[6]);
	CU_ASSERT_FALSE(net_timer_armed(&tm[6]));
	CU_ASSERT_EQUAL(wheel.count, 4);
	CU_ASSERT_EQUAL(net_timer_next(&wheel), 1000000 + 3000);
	CU_ASSERT_EQUAL(net_timer_expire(&wheel, 1000000 + 2999, on_fire, NULL), 0);
	CU_ASSERT_EQUAL(net_timer_expire(&wheel, 1000000 + 3000, on_fire, NULL), 1);
	CU_ASSERT(fired_order[0] == 3 || fired_order[0] == 4);
	CU_ASSERT_FALSE(net_timer_armed(&tm[3]));
	CU_ASSERT_FALSE(net_timer_armed(&tm[4]));
	CU_ASSERT_EQUAL(net_timer_expire(&wheel, 1000000 + 6000, on_fire, NULL), 1);
	CU_ASSERT_EQUAL(fired_order[1], 1);
	/* The far timer waits its revolutions: not at +4.096 s, yes at +10 s. */
	CU_ASSERT_EQUAL(net_timer_expire(&wheel, 1000000 + 4096000 + 10000, on_fire, NULL), 0);
	CU_ASSERT_EQUAL(net_timer_expire(&wheel, 1000000 + 9999000, on_fire, NULL), 0);
	CU_ASSERT_EQUAL(net_timer_expire(&wheel, 1000000 + 10000000, on_fire, NULL), 1);
	CU_ASSERT_EQUAL(fired_order[2], 2);
	CU_ASSERT_EQUAL(wheel.count, 0);
	/* Re-arming from the callback with a past deadline fires on the next call. */
	net_timer_arm(&wheel, &tm[5], 0);
	uint64_t now = 1000000 + 10000000;
	unsigned total = 0;
	for (int i = 0; i < 20; i++) {
		now += 1000;
		unsigned f = net_timer_expire(&wheel, now, on_fire, NULL);
		CU_ASSERT(f <= 1);
		total += f;
	}
	CU_ASSERT_EQUAL(nfired, 10);
	CU_ASSERT_EQUAL(total, 7);
	/* A clock jump of hours fires everything once. */
	for (unsigned i = 0; i < 8; i++)
		net_timer_arm(&wheel, &tm[i], now + (uint64_t)i * 1000000);
	nfired = 0;
	quiet = true;
	CU_ASSERT_EQUAL(net_timer_expire(&wheel, now + 3600ull * 1000000, on_fire, NULL), 8);
	CU_ASSERT_EQUAL(wheel.count, 0);
}

/* ---- silly window syndrome (RFC 9293 section 3.8.6.2) --------------------- */

/* Receiver side: an app reading 100 bytes at a time from a full buffer
 * gets no window update until it has freed min(rcvbuf/2, MSS), and no
 * update ever moves the right edge by less than an MSS. */
static void test_window_update_after_sws_threshold(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.rcvbuf = conf.sndbuf = 16384;
	conf.max_conns = 8;
	conf.time_wait_max = 8;
	setup_conf(&conf);
	uint32_t iss = open_conn();
	app.paused = true;
	for (uint32_t off = 0; off < 16384; off += 1460) {
		uint32_t n = 16384 - off < 1460 ? 16384 - off : 1460;
		peer(PEER_ISN + 1 + off, iss + 1, TH_ACK, pattern + off, n);
	}
	th_poll(h);
	CU_ASSERT_EQUAL(th_last(h)->ack, PEER_ISN + 1 + 16384);
	CU_ASSERT_EQUAL(th_last(h)->wnd, 0);
	th_clear(h);
	app.paused = false;
	app.consume_max = 100;
	uint32_t freed = 0, last_edge = PEER_ISN + 1 + 16384;
	unsigned updates = 0;
	while (freed < 16384) {
		tcp_recv_resume(app.c);
		th_poll(h);
		freed = (uint32_t)app.rx_len;
		if (updates == 0) {
			/* MSS = 1460 < 16384 / 2: nothing before that is freed. */
			if (freed < 1460) {
				CU_ASSERT_EQUAL_FATAL(h->ncap, 0);
			} else {
				CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
			}
		}
		for (unsigned i = updates; i < h->ncap; i++) {
			struct th_seg *u = &h->cap[i];
			CU_ASSERT_EQUAL(u->len, 0);
			CU_ASSERT_EQUAL(u->ack, PEER_ISN + 1 + 16384);
			uint32_t edge = u->ack + u->wnd;
			CU_ASSERT(edge - last_edge >= 1460);
			CU_ASSERT(u->wnd <= freed);
			last_edge = edge;
		}
		updates = h->ncap;
	}
	CU_ASSERT_EQUAL(app.rx_len, 16384);
	CU_ASSERT_EQUAL(memcmp(app.rx, pattern, 16384), 0);
	/* Steps of 1 MSS while the window is small, then of 2 MSS. */
	CU_ASSERT(updates >= 4 && updates <= 8);
	CU_ASSERT(last_edge + 2920 > PEER_ISN + 1 + 16384 + 16384);
	teardown();
}

/* Sender side: a window that opens a little while data waits gets full
 * segments only; a small window with nothing in flight is used when the
 * override timer fires (RFC 1122 section 4.2.3.4). */
static void test_sender_sws_avoidance(void)
{
	setup();
	uint32_t iss = open_conn();
	struct tcp_conn *c = app.c;
	/* The peer offers 3000 bytes: two full segments, not a third of 80. */
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1, TH_ACK, 3000, TH_NOOPTS, NULL, 0);
	CU_ASSERT_EQUAL(tcp_send(c, pattern, 20000), 20000);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 2);
	CU_ASSERT_EQUAL(h->cap[0].len, 1460);
	CU_ASSERT_EQUAL(h->cap[1].len, 1460);
	th_clear(h);
	/* Acknowledged, and the window slides by what was acknowledged plus
	 * 200 bytes: 3200 usable -> two full segments again, 280 held. */
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1 + 2920, TH_ACK, 3200, TH_NOOPTS, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 2);
	CU_ASSERT_EQUAL(h->cap[0].len, 1460);
	CU_ASSERT_EQUAL(h->cap[1].len, 1460);
	th_clear(h);
	/* All acknowledged, window 300: nothing in flight, 300 < MSS and
	 * < half the largest window (65535): held until the override timer. */
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1 + 5840, TH_ACK, 300, TH_NOOPTS, NULL, 0);
	CU_ASSERT_EQUAL(h->ncap, 0);
	CU_ASSERT_TRUE(net_timer_armed(&c->rtx_timer));
	th_advance(h, 100000);
	CU_ASSERT_EQUAL(h->ncap, 0);
	for (int i = 0; i < 2000 && h->ncap == 0; i++)
		th_advance(h, 1000);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].seq, iss + 1 + 5840);
	CU_ASSERT_EQUAL(h->cap[0].len, 300);
	CU_ASSERT_EQUAL(memcmp(h->cap[0].data, pattern + 5840, 300), 0);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->zero_window_probes, 0);
	th_clear(h);
	/* Window 2000: one full segment; the 540 bytes after it wait for
	 * its ACK, which then opens a full segment's worth. */
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1 + 6140, TH_ACK, 2000, TH_NOOPTS, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].len, 1460);
	th_clear(h);
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1 + 7600, TH_ACK, 3000, TH_NOOPTS, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 2);
	CU_ASSERT_EQUAL(h->cap[0].seq, iss + 1 + 7600);
	CU_ASSERT_EQUAL(h->cap[0].len, 1460);
	CU_ASSERT_EQUAL(h->cap[1].len, 1460);
	teardown();
}

/* The peer's window counts from the ACK it came with: a retransmitted
 * segment (older SEG.SEQ) whose ACK advances SND.UNA updates the window
 * too, or the right edge would move forward by the bytes acknowledged. */
static void test_window_from_retransmitted_segment(void)
{
	setup();
	uint32_t iss = open_conn();
	struct tcp_conn *c = app.c;
	/* The peer's 200 bytes are lost; its next segment, a bare ACK at its
	 * SND.NXT, sets SND.WL1 beyond our RCV.NXT and offers 2920 bytes. */
	th_send(h, PP, 25, PEER_ISN + 201, iss + 1, TH_ACK, 2920, TH_NOOPTS, NULL, 0);
	CU_ASSERT_EQUAL(c->snd_wl1, PEER_ISN + 201);
	th_clear(h);
	CU_ASSERT_EQUAL(tcp_send(c, pattern, 10000), 10000);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 2);
	th_clear(h);
	/* It retransmits the lost bytes (SEG.SEQ < SND.WL1), acknowledging
	 * our 2920 bytes with its window closed. */
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1 + 2920, TH_ACK, 0, TH_NOOPTS, pattern, 200);
	CU_ASSERT_EQUAL(c->snd_una, iss + 1 + 2920);
	CU_ASSERT_EQUAL(c->snd_wnd, 0);
	for (unsigned i = 0; i < h->ncap; i++)
		CU_ASSERT_EQUAL(h->cap[i].len, 0);
	/* SND.WL1 did not move back. */
	CU_ASSERT_EQUAL(c->snd_wl1, PEER_ISN + 201);
	teardown();
}

static CU_TestInfo rec_tests[] = {
	{"lost middle segment: fast retransmit, every byte",
	 test_lost_middle_segment_fast_retransmit},
	{"RTO sane after fast recovery, next loss repaired", test_rto_sane_after_fast_recovery},
	{"NewReno partial ACK", test_newreno_partial_ack},
	{"slow start and congestion avoidance", test_slow_start_and_avoidance},
	{"RTO backoff and giving up", test_rto_backoff_and_give_up},
	{"RTT estimation with Karn's rule", test_rtt_estimation_karn},
	{"retransmission from the unacked queue", test_retransmit_from_unacked_queue},
	{"zero-window probing with backoff", test_zero_window_probe},
	{"probe byte accepted when the window opened", test_probe_accepted_when_window_opened},
	{"FIN drops out-of-order islands", test_fin_drops_islands},
	{"out-of-order reassembly", test_reassembly},
	{"reassembly per-connection cap", test_reassembly_conn_cap},
	{"reassembly per-core cap", test_reassembly_global_cap},
	{"reassembly island cap", test_reassembly_range_cap},
	{"SACK blocks in duplicate ACKs", test_sack_blocks},
	{"duplicate segment ACKed at once", test_duplicate_segment_acked_at_once},
	{"pure ACK sequence inside the peer's window", test_ack_seq_inside_peer_window},
	{"timer wheel", test_timer_wheel},
	{"receiver SWS: window update once the threshold is freed",
	 test_window_update_after_sws_threshold},
	{"sender SWS: full segments, override timer", test_sender_sws_avoidance},
	{"window taken from a retransmitted segment's ACK", test_window_from_retransmitted_segment},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"tcp_recovery", NULL, NULL, NULL, NULL, rec_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}

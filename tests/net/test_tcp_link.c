/*
 * test_tcp_link.c - two TCP stacks talking through a seeded lossy in-memory
 * link (drop, duplicate, reorder), transferring 1 MiB in each direction
 * byte-exact; plus many short active-close connections (TIME_WAIT must not
 * exhaust the ports), transfers across sequence wraparound and with large
 * scaled windows.
 */
#include "mx_test.h"
#include "tcp_harness.h"
#include "tcp_int.h"

#include <time.h>

#define ADDR_A 0x0a4d0101u
#define ADDR_B 0x0a4d0102u

struct pkt {
	uint64_t at, id;
	int to; /* 0: A, 1: B */
	uint32_t src, dst;
	size_t len;
	uint8_t *data;
};

struct link {
	struct th_stack *side[2];
	struct pkt *q;
	size_t n, cap;
	uint64_t rng;
	unsigned drop_pct, dup_pct, reorder_pct;
	uint64_t delay_us;
	uint64_t sent, dropped, duplicated, ids;
	size_t max_queue;
	/* per sending side: data segments by payload size, pure ACKs */
	uint64_t data_segs[2], small_segs[2], tiny_segs[2], pure_acks[2], data_bytes[2];
};

static uint32_t rnd(struct link *l)
{
	l->rng ^= l->rng << 13;
	l->rng ^= l->rng >> 7;
	l->rng ^= l->rng << 17;
	return (uint32_t)(l->rng >> 11);
}

static void link_enqueue(struct link *l, int to, uint32_t src, uint32_t dst, const uint8_t *seg,
			 size_t len, uint64_t at)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 256;
		l->q = realloc(l->q, l->cap * sizeof(*l->q));
	}
	struct pkt *p = &l->q[l->n++];
	p->at = at;
	p->id = l->ids++;
	p->to = to;
	p->src = src;
	p->dst = dst;
	p->len = len;
	p->data = malloc(len);
	memcpy(p->data, seg, len);
	if (l->n > l->max_queue)
		l->max_queue = l->n;
}

static void link_hook(struct th_stack *h, uint32_t src, uint32_t dst, const uint8_t *seg,
		      size_t len)
{
	struct link *l = h->hook_ctx;
	int to = h == l->side[0] ? 1 : 0;
	l->sent++;
	{
		int from = to ? 0 : 1;
		uint32_t doff = (uint32_t)(seg[12] >> 4) * 4u;
		uint32_t plen = len > doff ? (uint32_t)(len - doff) : 0;
		if (plen) {
			l->data_segs[from]++;
			l->data_bytes[from] += plen;
			if (plen < 536)
				l->small_segs[from]++;
			if (plen < 64)
				l->tiny_segs[from]++;
		} else if (!(seg[13] & (TH_SYN | TH_FIN | TH_RST))) {
			l->pure_acks[from]++;
		}
	}
	bool drop = rnd(l) % 100 < l->drop_pct;
	if (getenv("TCP_TEST_TRACE")) {
		struct th_seg t;
		th_parse(&t, src, dst, seg, len);
		if (h->ts->conn_count) {
			struct tcp_conn *cc = NULL;
			for (uint32_t i = 0; i <= h->ts->conn_mask && !cc; i++)
				cc = h->ts->conn_tab[i];
			if (cc)
				fprintf(stderr,
					"   [%c st %d rto %llu bo %u cwnd %u ssth %u swnd %u una "
					"%u nxt %u max %u sb %u rec %d srtt %lld]\n",
					to ? 'A' : 'B', cc->state, (unsigned long long)cc->rto_us,
					cc->backoff, cc->cwnd, cc->ssthresh, cc->snd_wnd,
					cc->snd_una, cc->snd_nxt, cc->snd_max, cc->sbuf_len,
					cc->in_recovery, (long long)cc->srtt_us);
		}
		fprintf(stderr, "%llu %c>%c %s%s%s%s seq %u ack %u len %u wnd %u ts %u/%u%s\n",
			(unsigned long long)h->now, to ? 'A' : 'B', to ? 'B' : 'A',
			t.flags & TH_SYN ? "S" : "", t.flags & TH_FIN ? "F" : "",
			t.flags & TH_RST ? "R" : "", t.flags & TH_ACK ? "." : "", t.seq, t.ack,
			t.len, t.wnd, t.tsval, t.tsecr, drop ? " DROP" : "");
		free(t.raw);
	}
	if (drop) {
		l->dropped++;
		return;
	}
	uint64_t at = h->now + l->delay_us;
	if (rnd(l) % 100 < l->reorder_pct)
		at += rnd(l) % (3 * l->delay_us + 1);
	link_enqueue(l, to, src, dst, seg, len, at);
	if (rnd(l) % 100 < l->dup_pct) {
		l->duplicated++;
		link_enqueue(l, to, src, dst, seg, len, at + rnd(l) % (l->delay_us + 1));
	}
}

/* Deliver every packet due at now, in (time, send order); returns the next packet time. */
static uint64_t link_run(struct link *l, uint64_t now)
{
	for (unsigned guard = 0; guard < 1000000; guard++) {
		size_t best = SIZE_MAX;
		for (size_t i = 0; i < l->n; i++) {
			struct pkt *p = &l->q[i];
			if (p->at > now)
				continue;
			if (best == SIZE_MAX || p->at < l->q[best].at ||
			    (p->at == l->q[best].at && p->id < l->q[best].id))
				best = i;
		}
		if (best == SIZE_MAX)
			break;
		struct pkt p = l->q[best];
		l->q[best] = l->q[--l->n];
		struct th_stack *h = l->side[p.to];
		tcp_input(h->ts, p.src, p.dst, p.data, p.len, now);
		free(p.data);
	}
	uint64_t next = UINT64_MAX;
	for (size_t i = 0; i < l->n; i++)
		if (l->q[i].at < next)
			next = l->q[i].at;
	return next;
}

static void link_free(struct link *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->q[i].data);
	free(l->q);
}

/* An app endpoint that streams `total` bytes of a pattern and verifies what it gets. */
struct peer {
	struct tcp_conn *c;
	size_t total, sent, rcvd;
	uint32_t tx_salt, rx_salt;
	bool shut, peer_closed, bad;
	int closed, why;
	size_t consume_max;
};

static uint8_t pat(uint32_t salt, size_t i)
{
	uint32_t x = (uint32_t)i * 2654435761u + salt;
	return (uint8_t)(x >> 24 ^ x >> 7);
}

static void peer_pump(struct peer *p)
{
	uint8_t buf[8192];
	while (p->c && p->sent < p->total && !p->shut) {
		size_t n = p->total - p->sent;
		if (n > sizeof(buf))
			n = sizeof(buf);
		for (size_t i = 0; i < n; i++)
			buf[i] = pat(p->tx_salt, p->sent + i);
		ssize_t w = tcp_send(p->c, buf, n);
		if (w <= 0)
			break;
		p->sent += (size_t)w;
	}
	if (p->c && p->sent == p->total && !p->shut) {
		p->shut = true;
		tcp_shutdown(p->c);
	}
}

static void peer_connected(struct tcp_conn *c, void *u)
{
	struct peer *p = u;
	p->c = c;
	peer_pump(p);
}

static size_t peer_data(struct tcp_conn *c, void *u, const uint8_t *d, size_t len)
{
	(void)c;
	struct peer *p = u;
	if (p->consume_max && len > p->consume_max)
		len = p->consume_max;
	for (size_t i = 0; i < len; i++)
		if (d[i] != pat(p->rx_salt, p->rcvd + i))
			p->bad = true;
	p->rcvd += len;
	return len;
}

static void peer_writable(struct tcp_conn *c, void *u)
{
	(void)c;
	peer_pump(u);
}

static void peer_peer_closed(struct tcp_conn *c, void *u)
{
	(void)c;
	((struct peer *)u)->peer_closed = true;
}

static void peer_closed(struct tcp_conn *c, void *u, enum tcp_close_reason why)
{
	(void)c;
	struct peer *p = u;
	p->closed++;
	p->why = (int)why;
	p->c = NULL;
}

static const struct tcp_conn_ops peer_ops = {
	.on_connected = peer_connected,
	.on_data = peer_data,
	.on_writable = peer_writable,
	.on_peer_closed = peer_peer_closed,
	.on_closed = peer_closed,
};

static int peer_accept(struct tcp_conn *c, void *ctx)
{
	struct peer *p = ctx;
	p->c = c;
	tcp_conn_set_ops(c, &peer_ops, p);
	peer_pump(p);
	return 0;
}

static void link_setup(struct link *l, struct tcp_conf *conf, uint64_t seed)
{
	memset(l, 0, sizeof(*l));
	l->rng = seed * 0x9e3779b97f4a7c15ull + 1;
	l->delay_us = 500;
	for (int i = 0; i < 2; i++) {
		l->side[i] = th_new(conf, seed + (uint64_t)i * 77);
		l->side[i]->hook = link_hook;
		l->side[i]->hook_ctx = l;
	}
}

/* Run the simulation until done() or the time bound; returns simulated µs. */
static uint64_t link_loop(struct link *l, struct peer *pa, struct peer *pb, uint64_t limit_us)
{
	uint64_t now = l->side[0]->now;
	uint64_t start = now;
	for (unsigned iter = 0; iter < 20000000 && now - start < limit_us; iter++) {
		l->side[0]->now = l->side[1]->now = now;
		uint64_t next = link_run(l, now);
		peer_pump(pa);
		peer_pump(pb);
		uint64_t da = tcp_poll(l->side[0]->ts, now);
		uint64_t db = tcp_poll(l->side[1]->ts, now);
		if (pa->closed && pb->closed && l->n == 0)
			break;
		/* The pumps and polls may have queued packets: look again. */
		for (size_t i = 0; i < l->n; i++)
			if (l->q[i].at < next)
				next = l->q[i].at;
		uint64_t t = next;
		if (da < t)
			t = da;
		if (db < t)
			t = db;
		if (l->n && next < t)
			t = next;
		if (t <= now)
			t = now + 1;
		if (t == UINT64_MAX)
			break;
		now = t;
	}
	return now - start;
}

static void transfer(unsigned drop, unsigned dup, unsigned reorder, uint64_t seed, size_t total,
		     struct tcp_conf *conf)
{
	struct link l;
	link_setup(&l, conf, seed);
	l.drop_pct = drop;
	l.dup_pct = dup;
	l.reorder_pct = reorder;
	struct peer pa = {.total = total, .tx_salt = 1, .rx_salt = 2};
	struct peer pb = {.total = total, .tx_salt = 2, .rx_salt = 1};
	struct net_stack *sa = &l.side[0]->st, *sb = &l.side[1]->st;
	CU_ASSERT_EQUAL_FATAL(tcp_listen(sb, 0, 25, peer_accept, &pb), 0);
	struct tcp_conn *c = tcp_connect(sa, ADDR_A, 0, ADDR_B, 25, &peer_ops, &pa);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	uint64_t took = link_loop(&l, &pa, &pb, 900ull * 1000000);
	CU_ASSERT_EQUAL(pa.rcvd, total);
	CU_ASSERT_EQUAL(pb.rcvd, total);
	if (pa.rcvd != total || pb.rcvd != total)
		fprintf(stderr, "\n  rcvd a %zu b %zu sent a %zu b %zu closed %d %d\n", pa.rcvd,
			pb.rcvd, pa.sent, pb.sent, pa.closed, pb.closed);
	CU_ASSERT_FALSE(pa.bad);
	CU_ASSERT_FALSE(pb.bad);
	CU_ASSERT_TRUE(pa.peer_closed);
	CU_ASSERT_TRUE(pb.peer_closed);
	CU_ASSERT_EQUAL(pa.closed, 1);
	CU_ASSERT_EQUAL(pb.closed, 1);
	CU_ASSERT_EQUAL(pa.why, TCP_CLOSE_NORMAL);
	CU_ASSERT_EQUAL(pb.why, TCP_CLOSE_NORMAL);
	CU_ASSERT_EQUAL(tcp_conn_count(l.side[0]->ts), 0);
	CU_ASSERT_EQUAL(tcp_conn_count(l.side[1]->ts), 0);
	const struct tcp_stats *st = tcp_get_stats(l.side[0]->ts);
	const struct tcp_stats *stb = tcp_get_stats(l.side[1]->ts);
	if (drop)
		CU_ASSERT(st->retransmits + stb->retransmits > 0);
	/* No stalls: a clean 1 ms-RTT link moves 1 MiB in well under a second,
	 * a mildly lossy one in a few seconds (200 ms minimum RTO). */
	if (drop == 0) {
		CU_ASSERT(took < 200000);
	} else if (drop <= 2) {
		CU_ASSERT(took < 5000000);
	}
	if (getenv("TCP_TEST_VERBOSE"))
		fprintf(stderr,
			"\n  drop %u%% dup %u%% reorder %u%%: %.3f s simulated, %llu segs, %llu "
			"dropped, rtx %llu/%llu fast %llu/%llu rto %llu/%llu ooo %llu/%llu\n",
			drop, dup, reorder, (double)took / 1e6, (unsigned long long)l.sent,
			(unsigned long long)l.dropped, (unsigned long long)st->retransmits,
			(unsigned long long)stb->retransmits,
			(unsigned long long)st->fast_retransmits,
			(unsigned long long)stb->fast_retransmits,
			(unsigned long long)st->rto_timeouts, (unsigned long long)stb->rto_timeouts,
			(unsigned long long)st->ooo_segs, (unsigned long long)stb->ooo_segs);
	link_free(&l);
	th_free(l.side[0]);
	th_free(l.side[1]);
}

static void test_wraparound_transfer(void);
static void test_large_scaled_window(void);
static void test_debug(void)
{
	const char *e = getenv("TCP_TEST_ONE");
	if (!e)
		return;
	if (!strcmp(e, "big")) {
		test_large_scaled_window();
		exit(CU_get_number_of_failures() ? 1 : 0);
	}
	if (!strcmp(e, "wrap")) {
		test_wraparound_transfer();
		exit(CU_get_number_of_failures() ? 1 : 0);
	}
	unsigned d, du, r, seed, kb;
	if (sscanf(e, "%u,%u,%u,%u,%u", &d, &du, &r, &seed, &kb) == 5)
		transfer(d, du, r, seed, (size_t)kb * 1024, NULL);
	exit(CU_get_number_of_failures() ? 1 : 0);
}

static void test_clean_link_1mib(void)
{
	transfer(0, 0, 0, 1, 1 << 20, NULL);
}

static void test_lossy_link_1mib(void)
{
	transfer(2, 1, 5, 2, 1 << 20, NULL);
}

static void test_very_lossy_link_1mib(void)
{
	transfer(10, 3, 20, 3, 1 << 20, NULL);
}

static void test_lossy_link_seeds(void)
{
	for (uint64_t seed = 10; seed < 16; seed++)
		transfer(5, 2, 10, seed, 256 * 1024, NULL);
}

static void test_lossy_small_buffers(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.sndbuf = 5000;
	conf.rcvbuf = 3000;
	conf.time_wait_us = 1000000;
	conf.max_conns = 16;
	conf.time_wait_max = 16;
	transfer(5, 2, 10, 21, 200 * 1024, &conf);
}

static void test_lossy_no_timestamps_no_wscale(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.timestamps = false;
	conf.wscale = 0;
	conf.rcvbuf = 60000;
	conf.time_wait_us = 1000000;
	conf.max_conns = 16;
	conf.time_wait_max = 16;
	transfer(3, 1, 10, 22, 1 << 20, &conf);
}

static void test_large_scaled_window(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.sndbuf = 4 << 20;
	conf.rcvbuf = 4 << 20;
	conf.wscale = 8;
	conf.time_wait_us = 1000000;
	conf.max_conns = 16;
	conf.time_wait_max = 16;
	transfer(1, 0, 2, 23, 4 << 20, &conf);
}

/* Many short connections from A to the same B:25, A closing first: TIME_WAIT
 * entries pile up on A; with few steerable ports, connects keep working by
 * reusing TIME_WAIT 4-tuples. */
static bool steer_few(void *ctx, uint32_t laddr, uint16_t lport, uint32_t raddr, uint16_t rport)
{
	(void)ctx, (void)laddr, (void)raddr, (void)rport;
	return lport % 1000 == 7; /* 51 usable ports */
}

static void test_time_wait_port_reuse(void)
{
	struct link l;
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.sndbuf = conf.rcvbuf = 8192;
	conf.max_conns = 64;
	conf.time_wait_max = 4096;
	conf.time_wait_us = 60ull * 1000000; /* real 2*MSL: entries outlive the test */
	link_setup(&l, &conf, 31);
	static struct tcp_stack_ops ops;
	ops = *th_ops();
	ops.steers_here = steer_few;
	tcp_destroy(l.side[0]->ts);
	l.side[0]->ts = tcp_create(&conf, &ops, l.side[0], 99);
	l.side[0]->st.tcp = l.side[0]->ts;
	tcp_poll(l.side[0]->ts, l.side[0]->now);
	struct peer pb_tmpl = {.total = 100, .tx_salt = 2, .rx_salt = 1};
	static struct peer pb;
	pb = pb_tmpl;
	CU_ASSERT_EQUAL_FATAL(tcp_listen(&l.side[1]->st, 0, 25, peer_accept, &pb), 0);
	unsigned ok = 0;
	for (unsigned i = 0; i < 200; i++) {
		struct peer pa = {.total = 100, .tx_salt = 1, .rx_salt = 2};
		pb = pb_tmpl;
		struct tcp_conn *c =
			tcp_connect(&l.side[0]->st, ADDR_A, 0, ADDR_B, 25, &peer_ops, &pa);
		CU_ASSERT_PTR_NOT_NULL(c);
		if (!c)
			break;
		uint16_t lport;
		tcp_conn_endpoints(c, NULL, &lport, NULL, NULL);
		CU_ASSERT_EQUAL(lport % 1000, 7);
		link_loop(&l, &pa, &pb, 30ull * 1000000);
		if (pa.rcvd == 100 && pb.rcvd == 100 && pa.closed == 1 && pb.closed == 1 &&
		    !pa.bad && !pb.bad)
			ok++;
	}
	CU_ASSERT_EQUAL(ok, 200);
	const struct tcp_stats *st = tcp_get_stats(l.side[0]->ts);
	CU_ASSERT(st->time_wait_reused >= 149);
	CU_ASSERT_EQUAL(st->ephemeral_exhausted, 0);
	CU_ASSERT(st->time_wait_conns >= 100);
	link_free(&l);
	th_free(l.side[0]);
	th_free(l.side[1]);
}

/*
 * A full TIME_WAIT table evicts its oldest entry for each new one (counted
 * in time_wait_full): after 40 active closes with room for 8, exactly the
 * last 8 4-tuples are found and the 32 evicted ones are not (the hash chains
 * of a 16-bucket table stay consistent through the unlinking), and all go
 * at 2*MSL.
 */
static void test_time_wait_table_full(void)
{
	struct link l;
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.sndbuf = conf.rcvbuf = 8192;
	conf.max_conns = 64;
	conf.time_wait_max = 8;
	conf.time_wait_us = 60ull * 1000000;
	link_setup(&l, &conf, 41);
	struct peer pb_tmpl = {.total = 10, .tx_salt = 2, .rx_salt = 1};
	static struct peer pb;
	CU_ASSERT_EQUAL_FATAL(tcp_listen(&l.side[1]->st, 0, 25, peer_accept, &pb), 0);
	enum { N = 40, KEEP = 8 };
	uint16_t lports[N];
	unsigned ok = 0;
	for (unsigned i = 0; i < N; i++) {
		struct peer pa = {.total = 10, .tx_salt = 1, .rx_salt = 2};
		pb = pb_tmpl;
		struct tcp_conn *c =
			tcp_connect(&l.side[0]->st, ADDR_A, 0, ADDR_B, 25, &peer_ops, &pa);
		CU_ASSERT_PTR_NOT_NULL_FATAL(c);
		tcp_conn_endpoints(c, NULL, &lports[i], NULL, NULL);
		link_loop(&l, &pa, &pb, 30ull * 1000000);
		ok += pa.closed == 1 && pb.closed == 1 && !pa.bad && !pb.bad;
	}
	CU_ASSERT_EQUAL(ok, N);
	struct tcp_state *ts = l.side[0]->ts;
	const struct tcp_stats *st = tcp_get_stats(ts);
	CU_ASSERT_EQUAL(st->time_wait_conns, N);
	CU_ASSERT_EQUAL(st->time_wait_full, N - KEEP);
	CU_ASSERT_EQUAL(ts->tw_count, KEEP);
	unsigned found = 0, wrong = 0;
	for (unsigned i = 0; i < N; i++) {
		bool in = tcp_tw_lookup(ts, ADDR_A, lports[i], ADDR_B, 25) != NULL;
		found += in;
		wrong += in != (i >= N - KEEP);
	}
	CU_ASSERT_EQUAL(found, KEEP);
	CU_ASSERT_EQUAL(wrong, 0);
	/* 2*MSL later every entry is gone, through the same unlinking. */
	uint64_t later = l.side[0]->now + conf.time_wait_us + 2000000;
	tcp_poll(ts, later);
	CU_ASSERT_EQUAL(ts->tw_count, 0);
	found = 0;
	for (unsigned i = 0; i < N; i++)
		found += tcp_tw_lookup(ts, ADDR_A, lports[i], ADDR_B, 25) != NULL;
	CU_ASSERT_EQUAL(found, 0);
	link_free(&l);
	th_free(l.side[0]);
	th_free(l.side[1]);
}

/* Both ISNs near 2^32: force them through the seed until they are. */
static void test_wraparound_transfer(void)
{
	/* Craft it directly: a passive stack with a peer ISN just below 2^32,
	 * and our ISS moved near the wrap by patching the SYN_RCVD state. */
	struct link l;
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.time_wait_us = 1000000;
	conf.max_conns = 16;
	conf.time_wait_max = 16;
	conf.sndbuf = conf.rcvbuf = 64 * 1024;
	link_setup(&l, &conf, 41);
	struct peer pa = {.total = 300000, .tx_salt = 5, .rx_salt = 6};
	struct peer pb = {.total = 300000, .tx_salt = 6, .rx_salt = 5};
	CU_ASSERT_EQUAL_FATAL(tcp_listen(&l.side[1]->st, 0, 25, peer_accept, &pb), 0);
	/* Hold A's SYN, rewrite A's ISS so both directions cross 2^32. */
	struct tcp_conn *c = tcp_connect(&l.side[0]->st, ADDR_A, 0, ADDR_B, 25, &peer_ops, &pa);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	CU_ASSERT_EQUAL_FATAL(l.n, 1);
	free(l.q[0].data);
	l.n = 0;
	uint32_t iss = 0xffffffffu - 5000;
	c->iss = iss;
	c->snd_una = c->snd_max = iss;
	c->snd_buf_seq = iss + 1;
	c->recover = iss;
	tcp_send_syn(c);
	CU_ASSERT_EQUAL_FATAL(l.n, 1);
	/* B's ISS: let the SYN arrive, then patch the SYN_RCVD child and resend. */
	struct pkt syn = l.q[0];
	l.n = 0;
	tcp_input(l.side[1]->ts, syn.src, syn.dst, syn.data, syn.len, l.side[1]->now);
	free(syn.data);
	struct tcp_conn *b = tcp_conn_lookup(l.side[1]->ts, ADDR_B, 25, ADDR_A, c->lport);
	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	for (size_t i = 0; i < l.n; i++)
		free(l.q[i].data);
	l.n = 0;
	uint32_t biss = 0xffffffffu - 70000;
	b->iss = biss;
	b->snd_una = b->snd_max = biss;
	b->snd_buf_seq = biss + 1;
	b->recover = biss;
	tcp_send_syn(b);
	l.drop_pct = 2;
	l.reorder_pct = 5;
	link_loop(&l, &pa, &pb, 300ull * 1000000);
	CU_ASSERT_EQUAL(pa.rcvd, 300000);
	CU_ASSERT_EQUAL(pb.rcvd, 300000);
	CU_ASSERT_FALSE(pa.bad);
	CU_ASSERT_FALSE(pb.bad);
	CU_ASSERT_EQUAL(pa.closed, 1);
	CU_ASSERT_EQUAL(pb.closed, 1);
	link_free(&l);
	th_free(l.side[0]);
	th_free(l.side[1]);
}

/* A receiver that consumes slowly (flow control by on_data) loses nothing. */
static void test_slow_consumer_lossy(void)
{
	struct link l;
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.time_wait_us = 1000000;
	conf.max_conns = 16;
	conf.time_wait_max = 16;
	conf.sndbuf = conf.rcvbuf = 16 * 1024;
	link_setup(&l, &conf, 51);
	l.drop_pct = 3;
	l.reorder_pct = 5;
	struct peer pa = {.total = 200000, .tx_salt = 1, .rx_salt = 2, .consume_max = 700};
	struct peer pb = {.total = 200000, .tx_salt = 2, .rx_salt = 1, .consume_max = 333};
	CU_ASSERT_EQUAL_FATAL(tcp_listen(&l.side[1]->st, 0, 25, peer_accept, &pb), 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(
		tcp_connect(&l.side[0]->st, ADDR_A, 0, ADDR_B, 25, &peer_ops, &pa));
	/* The apps consume at most consume_max per offer, so re-offer each round. */
	uint64_t now = l.side[0]->now;
	for (unsigned i = 0; i < 2000000 && !(pa.closed && pb.closed); i++) {
		l.side[0]->now = l.side[1]->now = now;
		link_run(&l, now);
		if (pa.c)
			tcp_recv_resume(pa.c);
		if (pb.c)
			tcp_recv_resume(pb.c);
		peer_pump(&pa);
		peer_pump(&pb);
		tcp_poll(l.side[0]->ts, now);
		tcp_poll(l.side[1]->ts, now);
		now += 200;
	}
	CU_ASSERT_EQUAL(pa.rcvd, 200000);
	CU_ASSERT_EQUAL(pb.rcvd, 200000);
	CU_ASSERT_FALSE(pa.bad);
	CU_ASSERT_FALSE(pb.bad);
	CU_ASSERT_EQUAL(pa.closed, 1);
	CU_ASSERT_EQUAL(pb.closed, 1);
	link_free(&l);
	th_free(l.side[0]);
	th_free(l.side[1]);
}

/* ---- silly window syndrome: an echo server with flow control ------------- */

/*
 * The echo service of tests/net/netsvc.c: on_data sends what tcp_send()
 * accepts and returns only that count (the rest stays in the receive
 * buffer, the window closes), on_writable resumes delivery.  Space in the
 * send buffer then frees and the receive window reopens in small steps,
 * which is how a TCP without SWS avoidance (RFC 9293 section 3.8.6.2)
 * ends up sending segments of a few bytes.
 */
struct echo {
	struct tcp_conn *c;
	size_t echoed;
	int closed;
};

static size_t echo_data(struct tcp_conn *c, void *u, const uint8_t *d, size_t len)
{
	struct echo *e = u;
	ssize_t n = tcp_send(c, d, len);
	if (n < 0)
		return len;
	e->echoed += (size_t)n;
	return (size_t)n;
}

static void echo_writable(struct tcp_conn *c, void *u)
{
	(void)u;
	tcp_recv_resume(c);
}

static void echo_peer_closed(struct tcp_conn *c, void *u)
{
	(void)u;
	tcp_close(c);
}

static void echo_closed(struct tcp_conn *c, void *u, enum tcp_close_reason why)
{
	(void)c;
	(void)why;
	struct echo *e = u;
	e->closed++;
	e->c = NULL;
}

static const struct tcp_conn_ops echo_ops = {
	.on_data = echo_data,
	.on_writable = echo_writable,
	.on_peer_closed = echo_peer_closed,
	.on_closed = echo_closed,
};

static int echo_accept(struct tcp_conn *c, void *ctx)
{
	struct echo *e = ctx;
	e->c = c;
	tcp_conn_set_ops(c, &echo_ops, e);
	return 0;
}

/*
 * A client streams `total` bytes through the echo server and reads them
 * back; the client's reader takes at most consume_max bytes per offer.
 * Returns the simulated time; fills *l's segment counters.
 */
static uint64_t echo_run(struct link *l, struct tcp_conf *conf, size_t total, size_t consume_max,
			 uint64_t seed)
{
	link_setup(l, conf, seed);
	if (getenv("ECHO_DROP")) /* debugging: ECHO_DROP=pct adds loss */
		l->drop_pct = (unsigned)atoi(getenv("ECHO_DROP"));
	struct peer pa = {.total = total, .tx_salt = 7, .rx_salt = 7, .consume_max = consume_max};
	struct echo e = {0};
	CU_ASSERT_EQUAL_FATAL(tcp_listen(&l->side[1]->st, 0, 7, echo_accept, &e), 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(
		tcp_connect(&l->side[0]->st, ADDR_A, 0, ADDR_B, 7, &peer_ops, &pa));
	uint64_t now = l->side[0]->now, start = now, done = 0;
	for (unsigned i = 0; i < 4000000 && now - start < 60000000 && !(pa.closed && e.closed);
	     i++) {
		l->side[0]->now = l->side[1]->now = now;
		uint64_t next = link_run(l, now);
		if (pa.c && consume_max)
			tcp_recv_resume(pa.c); /* a slow reader: re-offer each round */
		peer_pump(&pa);
		if (!done && pa.rcvd == total)
			done = now;
		if (pa.c && pa.rcvd == total)
			tcp_close(pa.c);
		uint64_t da = tcp_poll(l->side[0]->ts, now);
		uint64_t db = tcp_poll(l->side[1]->ts, now);
		for (size_t k = 0; k < l->n; k++)
			if (l->q[k].at < next)
				next = l->q[k].at;
		uint64_t t = next < da ? next : da;
		if (db < t)
			t = db;
		if (consume_max && t > now + 100)
			t = now + 100;
		if (t <= now)
			t = now + 1;
		if (t == UINT64_MAX)
			break;
		now = t;
	}
	CU_ASSERT_EQUAL(pa.rcvd, total);
	CU_ASSERT_EQUAL(e.echoed, total);
	CU_ASSERT_FALSE(pa.bad);
	CU_ASSERT_EQUAL(pa.closed, 1);
	CU_ASSERT_EQUAL(e.closed, 1);
	if (getenv("TCP_TEST_VERBOSE"))
		fprintf(stderr,
			"\n  echo %zu KiB (reader %zu): %.3f s simulated; client data %llu "
			"(<536 B %llu, <64 B %llu) acks %llu; server data %llu (<536 B %llu, "
			"<64 B %llu) acks %llu\n",
			total >> 10, consume_max, (double)(done - start) / 1e6,
			(unsigned long long)l->data_segs[0], (unsigned long long)l->small_segs[0],
			(unsigned long long)l->tiny_segs[0], (unsigned long long)l->pure_acks[0],
			(unsigned long long)l->data_segs[1], (unsigned long long)l->small_segs[1],
			(unsigned long long)l->tiny_segs[1], (unsigned long long)l->pure_acks[1]);
	if (getenv("TCP_TEST_VERBOSE")) {
		const struct tcp_stats *x = tcp_get_stats(l->side[0]->ts),
				       *y = tcp_get_stats(l->side[1]->ts);
		fprintf(stderr, "  outside window %llu/%llu rtx %llu/%llu probes %llu/%llu\n",
			(unsigned long long)x->seg_outside_window,
			(unsigned long long)y->seg_outside_window,
			(unsigned long long)x->retransmits, (unsigned long long)y->retransmits,
			(unsigned long long)x->zero_window_probes,
			(unsigned long long)y->zero_window_probes);
	}
	if (pa.c)
		tcp_abort(pa.c);
	return done ? done - start : UINT64_MAX;
}

static void echo_free(struct link *l)
{
	link_free(l);
	th_free(l->side[0]);
	th_free(l->side[1]);
}

/* Sender-side SWS avoidance (RFC 9293 section 3.8.6.2.1, RFC 1122
 * 4.2.3.4): bulk echo through a flow-controlled echo server is carried in
 * full-sized segments both ways, with about one ACK per two segments. */
static void test_echo_no_silly_window(void)
{
	struct link l;
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.time_wait_us = 1000000;
	conf.max_conns = 16;
	conf.time_wait_max = 16;
	const size_t total = 8u << 20;
	uint64_t took = echo_run(&l, &conf, total, 0, 61);
	uint64_t full = total / 1448;
	for (int s = 0; s < 2; s++) {
		/* Full segments carry 1448 bytes (1460 less timestamps).  The
		 * client writes 8 KiB at a time and each write may end in a
		 * short segment (no Nagle), so allow 1/8 more segments than
		 * full ones, but only 1% below 536 bytes. */
		CU_ASSERT(l.data_bytes[s] == total);
		CU_ASSERT(l.data_segs[s] <= full + full / 8);
		CU_ASSERT(l.small_segs[s] <= full / 100);
		CU_ASSERT(l.tiny_segs[s] <= 16);
		/* Pure ACKs: the delayed-ACK rule gives about one per two
		 * segments; window updates must not add a storm of them. */
		CU_ASSERT(l.pure_acks[s] <= full);
	}
	/* 8 MiB over a 1 ms-RTT link with 256 KiB windows: about 40 ms when
	 * the window is the limit; a silly-window exchange takes many times
	 * longer. */
	CU_ASSERT(took < 150000);
	echo_free(&l);
}

/* A client that reads in small slices (500 bytes per offer) must not make
 * the echo server send small segments: the window is reopened only in
 * steps of at least min(rcvbuf/2, MSS) (RFC 9293 section 3.8.6.2.2). */
static void test_echo_slow_reader(void)
{
	struct link l;
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.time_wait_us = 1000000;
	conf.max_conns = 16;
	conf.time_wait_max = 16;
	conf.sndbuf = conf.rcvbuf = 32 * 1024;
	const size_t total = 1u << 20;
	echo_run(&l, &conf, total, 500, 62);
	uint64_t full = total / 1448;
	for (int s = 0; s < 2; s++) {
		CU_ASSERT(l.data_bytes[s] == total);
		CU_ASSERT(l.data_segs[s] <= full + full / 20);
		CU_ASSERT(l.small_segs[s] <= full / 50);
		CU_ASSERT(l.tiny_segs[s] <= 16);
	}
	echo_free(&l);
}

/* ---- throughput: two stacks, no loss, a FIFO between them ---------------- */

struct fifo_pkt {
	uint8_t data[1600];
	uint16_t len;
	uint8_t to;
};

static struct fifo_pkt *fifo;
static size_t fifo_head, fifo_tail;
#define FIFO_CAP 8192u
static struct tcp_state *bside[2];

static int fifo_out(void *ctx, uint32_t src, uint32_t dst, const uint8_t *seg, size_t len)
{
	(void)src, (void)dst;
	if (fifo_tail - fifo_head >= FIFO_CAP || len > sizeof(fifo[0].data))
		return -ENOBUFS;
	struct fifo_pkt *p = &fifo[fifo_tail++ % FIFO_CAP];
	memcpy(p->data, seg, len);
	p->len = (uint16_t)len;
	p->to = ctx == bside[0] ? 1 : 0;
	return 0;
}

static size_t bench_rx;
static size_t bench_data(struct tcp_conn *c, void *u, const uint8_t *d, size_t len)
{
	(void)c, (void)u, (void)d;
	bench_rx += len;
	return len;
}

static const struct tcp_conn_ops bench_ops = {.on_data = bench_data};

static int bench_accept(struct tcp_conn *c, void *ctx)
{
	(void)ctx;
	tcp_conn_set_ops(c, &bench_ops, NULL);
	return 0;
}

/* Informational (TCP_TEST_VERBOSE prints segments/s); asserts only that
 * bulk data flows with about one ACK per burst. */
static void test_throughput(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.max_conns = 8;
	conf.time_wait_max = 8;
	conf.sndbuf = conf.rcvbuf = 1 << 20;
	struct tcp_stack_ops o = {.output = fifo_out};
	fifo = malloc(FIFO_CAP * sizeof(*fifo));
	fifo_head = fifo_tail = 0;
	bench_rx = 0;
	bside[0] = tcp_create(&conf, &o, NULL, 1);
	bside[1] = tcp_create(&conf, &o, NULL, 2);
	CU_ASSERT_PTR_NOT_NULL_FATAL(bside[0]);
	CU_ASSERT_PTR_NOT_NULL_FATAL(bside[1]);
	bside[0]->ctx = bside[0];
	bside[1]->ctx = bside[1];
	struct net_stack sa = {.tcp = bside[0]}, sb = {.tcp = bside[1]};
	CU_ASSERT_EQUAL_FATAL(tcp_listen(&sb, 0, 25, bench_accept, NULL), 0);
	struct tcp_conn *c = tcp_connect(&sa, ADDR_A, 0, ADDR_B, 25, &bench_ops, NULL);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	static uint8_t buf[65536];
	const size_t total = (size_t)256 << 20;
	size_t sent = 0;
	uint64_t now = 1000000;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (unsigned iter = 0; iter < 10000000 && bench_rx < total; iter++) {
		if (sent < total && c->state == TCPS_ESTABLISHED) {
			size_t want = total - sent < sizeof(buf) ? total - sent : sizeof(buf);
			ssize_t n = tcp_send(c, buf, want);
			if (n > 0)
				sent += (size_t)n;
		}
		for (unsigned b = 0; b < 32 && fifo_head != fifo_tail; b++) {
			struct fifo_pkt *p = &fifo[fifo_head++ % FIFO_CAP];
			tcp_input(bside[p->to], p->to ? ADDR_A : ADDR_B, p->to ? ADDR_B : ADDR_A,
				  p->data, p->len, now);
		}
		now += 1;
		tcp_poll(bside[0], now);
		tcp_poll(bside[1], now);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	const struct tcp_stats *a = tcp_get_stats(bside[0]), *b = tcp_get_stats(bside[1]);
	uint64_t segs = a->segs_in + b->segs_in;
	CU_ASSERT_EQUAL(bench_rx, total);
	CU_ASSERT(a->segs_in * 10 < b->segs_in); /* ACKs coalesced per burst */
	CU_ASSERT_EQUAL(a->retransmits + b->retransmits, 0);
	if (getenv("TCP_TEST_VERBOSE"))
		fprintf(stderr, "\n  %zu MiB in %.3f s: %.2f M segments/s in, %.0f ns each\n",
			total >> 20, dt, (double)segs / dt / 1e6, dt * 1e9 / (double)segs);
	tcp_destroy(bside[0]);
	tcp_destroy(bside[1]);
	free(fifo);
}

static CU_TestInfo link_tests[] = {
	{"clean link, 1 MiB each way", test_clean_link_1mib},
	{"lossy link (2% drop, 1% dup, 5% reorder), 1 MiB each way", test_lossy_link_1mib},
	{"very lossy link (10% drop, 3% dup, 20% reorder), 1 MiB", test_very_lossy_link_1mib},
	{"lossy link, 6 seeds", test_lossy_link_seeds},
	{"lossy link, tiny buffers", test_lossy_small_buffers},
	{"lossy link, no timestamps, no window scaling", test_lossy_no_timestamps_no_wscale},
	{"large scaled window, 4 MiB", test_large_scaled_window},
	{"TIME_WAIT does not exhaust active-open ports", test_time_wait_port_reuse},
	{"a full TIME_WAIT table evicts the oldest, chains stay whole", test_time_wait_table_full},
	{"transfer across sequence wraparound", test_wraparound_transfer},
	{"slow consumer over lossy link loses nothing", test_slow_consumer_lossy},
	{"throughput, clean in-memory link", test_throughput},
	{"echo with flow control: full-sized segments both ways", test_echo_no_silly_window},
	{"echo to a reader of 500-byte slices: no small segments", test_echo_slow_reader},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"tcp_link", NULL, NULL, NULL, NULL, link_tests},
	CU_SUITE_INFO_NULL,
};

/* TCP_TEST_ONE=drop,dup,reorder,seed,KiB (or "wrap", "big") runs one
 * scenario alone, for debugging with TCP_TEST_TRACE=1. */
static CU_TestInfo debug_tests[] = {
	{"one scenario from TCP_TEST_ONE", test_debug},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo debug_suites[] = {
	{"tcp_link_debug", NULL, NULL, NULL, NULL, debug_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(getenv("TCP_TEST_ONE") ? debug_suites : suites);
}

/*
 * test_tcp_security.c - hostile-input defences of TCP: RFC 5961 (RST and
 * SYN in window, challenge ACK rate limit, ACK validation), PAWS (RFC 7323),
 * SYN cookies, ISN generation (RFC 6528), malformed headers and options,
 * sequence wraparound and window scaling on crafted segments.
 */
#include "mx_test.h"
#include "tcp_harness.h"
#include "tcp_int.h"

#define PP 40000
#define PEER_ISN 1000u

static struct th_stack *h;
static struct th_app app;

static void setup_conf(const struct tcp_conf *conf)
{
	h = th_new(conf, 11);
	memset(&app, 0, sizeof(app));
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

static uint32_t open_conn(uint32_t isn)
{
	struct th_opts o = {.mss = 1460, .wscale = -1};
	return th_passive_open(h, &app, PP, isn, o);
}

static void test_rst_exact_seq(void)
{
	setup();
	uint32_t iss = open_conn(PEER_ISN);
	peer(PEER_ISN + 1, iss + 1, TH_ACK, "abc", 3);
	peer(PEER_ISN + 4, 0, TH_RST, NULL, 0);
	CU_ASSERT_EQUAL(app.closed, 1);
	CU_ASSERT_EQUAL(app.why, TCP_CLOSE_RESET);
	teardown();
}

static void test_rst_in_window_challenge(void)
{
	setup();
	uint32_t iss = open_conn(PEER_ISN);
	peer(PEER_ISN + 100, 0, TH_RST, NULL, 0);
	CU_ASSERT_EQUAL(app.closed, 0);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].flags, TH_ACK);
	CU_ASSERT_EQUAL(h->cap[0].ack, PEER_ISN + 1);
	CU_ASSERT_EQUAL(h->cap[0].seq, iss + 1);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->challenge_acks, 1);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->rst_bad_seq, 1);
	/* The legitimate peer answers the challenge ACK with an exact RST. */
	peer(PEER_ISN + 1, 0, TH_RST, NULL, 0);
	CU_ASSERT_EQUAL(app.closed, 1);
	teardown();
}

static void test_rst_out_of_window_ignored(void)
{
	setup();
	open_conn(PEER_ISN);
	peer(PEER_ISN + 1 + 10000000, 0, TH_RST, NULL, 0);
	peer(PEER_ISN - 5, 0, TH_RST, NULL, 0);
	CU_ASSERT_EQUAL(app.closed, 0);
	CU_ASSERT_EQUAL(h->ncap, 0);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->rst_bad_seq, 2);
	teardown();
}

static void test_syn_in_established_challenge(void)
{
	setup();
	uint32_t iss = open_conn(PEER_ISN);
	peer(PEER_ISN + 50, 0, TH_SYN, NULL, 0);
	CU_ASSERT_EQUAL(app.closed, 0);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].flags, TH_ACK);
	CU_ASSERT_EQUAL(h->cap[0].ack, PEER_ISN + 1);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->syn_in_window, 1);
	/* Even a SYN at exactly RCV.NXT does not reset (RFC 5961 section 4.2). */
	th_clear(h);
	peer(PEER_ISN + 1, 0, TH_SYN, NULL, 0);
	CU_ASSERT_EQUAL(app.closed, 0);
	CU_ASSERT_EQUAL(h->ncap, 1);
	(void)iss;
	teardown();
}

static void test_challenge_ack_rate_limit(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.challenge_acks_per_s = 5;
	conf.max_conns = 8;
	conf.time_wait_max = 8;
	setup_conf(&conf);
	open_conn(PEER_ISN);
	for (int i = 0; i < 12; i++)
		peer(PEER_ISN + 10 + (uint32_t)i, 0, TH_RST, NULL, 0);
	CU_ASSERT_EQUAL(h->ncap, 5);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->challenge_acks, 5);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->challenge_acks_limited, 7);
	th_advance(h, 1000001);
	th_clear(h);
	peer(PEER_ISN + 10, 0, TH_SYN, NULL, 0);
	CU_ASSERT_EQUAL(h->ncap, 1);
	CU_ASSERT_EQUAL(app.closed, 0);
	teardown();
}

static void test_ack_validation(void)
{
	setup();
	uint32_t iss = open_conn(PEER_ISN);
	tcp_send(app.c, "hello", 5);
	th_clear(h);
	/* ACK of data never sent: answered with an ACK, segment dropped. */
	peer(PEER_ISN + 1, iss + 1000, TH_ACK, "zz", 2);
	CU_ASSERT_EQUAL(app.rx_len, 0);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].ack, PEER_ISN + 1);
	CU_ASSERT_EQUAL(tcp_send_pending(app.c), 5);
	/* ACK far below SND.UNA - MAX.SND.WND: challenge ACK (RFC 5961 5.2). */
	th_clear(h);
	peer(PEER_ISN + 1, iss - 200000, TH_ACK, "zz", 2);
	CU_ASSERT_EQUAL(app.rx_len, 0);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->challenge_acks, 1);
	/* A valid ACK works. */
	peer(PEER_ISN + 1, iss + 6, TH_ACK, "zz", 2);
	CU_ASSERT_EQUAL(app.rx_len, 2);
	CU_ASSERT_EQUAL(tcp_send_pending(app.c), 0);
	teardown();
}

static void test_paws(void)
{
	setup();
	struct th_opts o = {.mss = 1460, .wscale = -1, .ts = true, .tsval = 5000};
	uint32_t iss = th_passive_open(h, &app, PP, PEER_ISN, o);
	CU_ASSERT_TRUE(app.c->ts_ok);
	o.mss = 0;
	o.tsval = 5001;
	th_send(h, PP, 25, PEER_ISN + 1, iss + 1, TH_ACK, 65535, o, "new", 3);
	CU_ASSERT_EQUAL(app.rx_len, 3);
	CU_ASSERT_EQUAL(app.c->ts_recent, 5001);
	/* An old duplicate (wrapped sequence space) carries an older timestamp. */
	th_clear(h);
	o.tsval = 4000;
	th_send(h, PP, 25, PEER_ISN + 4, iss + 1, TH_ACK, 65535, o, "old", 3);
	CU_ASSERT_EQUAL(app.rx_len, 3);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->paws_drops, 1);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].ack, PEER_ISN + 4);
	CU_ASSERT_TRUE(h->cap[0].has_ts);
	CU_ASSERT_EQUAL(h->cap[0].tsecr, 5001);
	/* But a timestamp wrapping forward is fine. */
	o.tsval = 5001 + 0x7ffffff0u;
	th_send(h, PP, 25, PEER_ISN + 4, iss + 1, TH_ACK, 65535, o, "ok!", 3);
	CU_ASSERT_EQUAL(app.rx_len, 6);
	teardown();
}

static void test_syn_cookies(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.syn_backlog = 2;
	conf.max_conns = 64;
	conf.time_wait_max = 8;
	setup_conf(&conf);
	struct th_opts o = {.mss = 1300, .wscale = -1};
	th_send(h, 1001, 25, 10, 0, TH_SYN, 1000, o, NULL, 0);
	th_send(h, 1002, 25, 20, 0, TH_SYN, 1000, o, NULL, 0);
	CU_ASSERT_EQUAL(tcp_conn_count(h->ts), 2);
	th_clear(h);
	th_send(h, 1003, 25, 30, 0, TH_SYN, 1000, o, NULL, 0);
	CU_ASSERT_EQUAL(tcp_conn_count(h->ts), 2); /* no state for it */
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->backlog_full, 1);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->cookies_sent, 1);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	struct th_seg *sa = &h->cap[0];
	CU_ASSERT_EQUAL(sa->flags, TH_SYN | TH_ACK);
	CU_ASSERT_EQUAL(sa->ack, 31);
	CU_ASSERT_EQUAL(sa->wscale, -1);
	uint32_t cookie = sa->seq;
	/* A forged ACK (wrong cookie) is counted and refused. */
	th_clear(h);
	th_send(h, 1003, 25, 31, cookie + 2, TH_ACK, 1000, TH_NOOPTS, NULL, 0);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->cookies_invalid, 1);
	CU_ASSERT_EQUAL(tcp_conn_count(h->ts), 2);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].flags, TH_RST);
	/* A cookie for another 4-tuple is invalid too. */
	th_send(h, 1004, 25, 31, cookie + 1, TH_ACK, 1000, TH_NOOPTS, NULL, 0);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->cookies_invalid, 2);
	/* The real ACK, with data, creates the connection with MSS 1300. */
	th_clear(h);
	th_send(h, 1003, 25, 31, cookie + 1, TH_ACK, 65535, TH_NOOPTS, "EHLO", 4);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->cookies_valid, 1);
	CU_ASSERT_EQUAL(tcp_conn_count(h->ts), 3);
	CU_ASSERT_PTR_NOT_NULL_FATAL(app.c);
	CU_ASSERT_EQUAL(app.c->mss, 1300);
	CU_ASSERT_EQUAL(app.c->rport, 1003);
	CU_ASSERT_EQUAL(app.c->state, TCPS_ESTABLISHED);
	CU_ASSERT_EQUAL(app.rx_len, 4);
	static uint8_t big[3000];
	tcp_send(app.c, big, sizeof(big));
	CU_ASSERT(h->ncap >= 3);
	for (unsigned i = 0; i < h->ncap; i++)
		CU_ASSERT(h->cap[i].len <= 1300);
	CU_ASSERT_EQUAL(h->cap[0].seq, cookie + 1);
	/* Expired: a cookie older than its counter window is refused. */
	th_send(h, 1005, 25, 40, 0, TH_SYN, 1000, o, NULL, 0);
	uint32_t c2 = th_last(h)->seq;
	th_advance(h, 200ull * 1000000);
	th_send(h, 1005, 25, 41, c2 + 1, TH_ACK, 1000, TH_NOOPTS, NULL, 0);
	CU_ASSERT_EQUAL(tcp_get_stats(h->ts)->cookies_valid, 1);
	teardown();
}

/* Window scale and timestamps survive a cookie through the TSval bits. */
static void test_syn_cookie_options(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.syn_backlog = 0;
	conf.max_conns = 64;
	conf.time_wait_max = 8;
	setup_conf(&conf);
	struct th_opts o = {.mss = 1460, .wscale = 9, .ts = true, .tsval = 123};
	th_send(h, 2001, 25, 10, 0, TH_SYN, 1000, o, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	struct th_seg *sa = &h->cap[0];
	CU_ASSERT_EQUAL(sa->wscale, 7);
	CU_ASSERT_TRUE(sa->has_ts);
	CU_ASSERT_EQUAL(sa->tsecr, 123);
	struct th_opts a = {.wscale = -1, .ts = true, .tsval = 124, .tsecr = sa->tsval};
	th_send(h, 2001, 25, 11, sa->seq + 1, TH_ACK, 100, a, NULL, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(app.c);
	CU_ASSERT_TRUE(app.c->ts_ok);
	CU_ASSERT_TRUE(app.c->ws_ok);
	CU_ASSERT_EQUAL(app.c->snd_wscale, 9);
	CU_ASSERT_EQUAL(app.c->rcv_wscale, 7);
	CU_ASSERT_EQUAL(app.c->snd_wnd, 100u << 9);
	CU_ASSERT_EQUAL(app.c->mss, 1460 - 12);
	/* Without timestamps, no scaling can be remembered: none offered. */
	th_clear(h);
	struct th_opts n = {.mss = 1460, .wscale = 9};
	th_send(h, 2002, 25, 10, 0, TH_SYN, 1000, n, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].wscale, -1);
	CU_ASSERT_FALSE(h->cap[0].has_ts);
	teardown();
}

static void test_isn_keyed_and_monotonic(void)
{
	setup();
	struct tcp_state *ts = h->ts;
	uint32_t a = tcp_isn(ts, 1, 2, 3, 4);
	uint32_t b = tcp_isn(ts, 1, 2, 3, 5);
	CU_ASSERT_NOT_EQUAL(a, b);
	ts->now_us += 4000;
	uint32_t a2 = tcp_isn(ts, 1, 2, 3, 4);
	CU_ASSERT_EQUAL(a2 - a, 1000); /* 4 µs clock (RFC 6528) */
	struct th_stack *other = th_new(NULL, 12345);
	other->ts->now_us = ts->now_us;
	CU_ASSERT_NOT_EQUAL(tcp_isn(other->ts, 1, 2, 3, 4), a2); /* keyed by the seed */
	th_free(other);
	teardown();
}

static void test_malformed_segments(void)
{
	setup();
	uint32_t iss = open_conn(PEER_ISN);
	uint8_t b[64] = {0};
	const struct tcp_stats *st = tcp_get_stats(h->ts);
	tcp_input(h->ts, TH_REMOTE, TH_LOCAL, b, 10, h->now); /* short */
	CU_ASSERT_EQUAL(st->bad_header, 1);
	th_put16(b, PP);
	th_put16(b + 2, 25);
	th_put32(b + 4, PEER_ISN + 1);
	th_put32(b + 8, iss + 1);
	b[13] = TH_ACK;
	b[12] = 4 << 4; /* data offset 16 < 20 */
	tcp_input(h->ts, TH_REMOTE, TH_LOCAL, b, 40, h->now);
	CU_ASSERT_EQUAL(st->bad_header, 2);
	b[12] = 15 << 4; /* 60 > length */
	tcp_input(h->ts, TH_REMOTE, TH_LOCAL, b, 40, h->now);
	CU_ASSERT_EQUAL(st->bad_header, 3);
	b[12] = 6 << 4; /* 4 bytes of options */
	b[20] = 2;
	b[21] = 9; /* MSS with length 9 runs past the header */
	tcp_input(h->ts, TH_REMOTE, TH_LOCAL, b, 24, h->now);
	CU_ASSERT_EQUAL(st->bad_options, 1);
	b[21] = 0; /* zero-length option: would loop forever */
	tcp_input(h->ts, TH_REMOTE, TH_LOCAL, b, 24, h->now);
	CU_ASSERT_EQUAL(st->bad_options, 2);
	b[20] = 8;
	b[21] = 3; /* timestamp option of the wrong size */
	tcp_input(h->ts, TH_REMOTE, TH_LOCAL, b, 24, h->now);
	CU_ASSERT_EQUAL(st->bad_options, 3);
	b[20] = 1;
	b[21] = 1;
	b[22] = 1;
	b[23] = 0; /* NOPs and EOL: fine */
	tcp_input(h->ts, TH_REMOTE, TH_LOCAL, b, 24, h->now);
	CU_ASSERT_EQUAL(st->bad_options, 3);
	th_put16(b, 0); /* source port 0 */
	tcp_input(h->ts, TH_REMOTE, TH_LOCAL, b, 24, h->now);
	CU_ASSERT_EQUAL(st->bad_header, 4);
	CU_ASSERT_EQUAL(app.closed, 0);
	CU_ASSERT_EQUAL(app.rx_len, 0);
	teardown();
}

/* Both ISNs just below 2^32: handshake, data and close across the wrap. */
static void test_wraparound_crafted(void)
{
	setup();
	uint32_t pisn = 0xfffffff0u;
	th_send(h, PP, 25, pisn, 0, TH_SYN, 65535, (struct th_opts){.mss = 1460, .wscale = -1},
		NULL, 0);
	struct tcp_conn *c = tcp_conn_lookup(h->ts, TH_LOCAL, 25, TH_REMOTE, PP);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	/* Move our ISS near the wrap too and resend the SYN-ACK. */
	uint32_t iss = 0xfffffffau;
	c->iss = iss;
	c->snd_una = c->snd_max = iss;
	c->snd_buf_seq = iss + 1;
	c->recover = iss;
	th_clear(h);
	tcp_send_syn(c);
	CU_ASSERT_EQUAL(h->cap[0].seq, 0xfffffffau);
	peer(pisn + 1, iss + 1, TH_ACK, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(app.c, c);
	uint8_t d[100];
	for (int i = 0; i < 100; i++)
		d[i] = (uint8_t)i;
	peer(pisn + 1, iss + 1, TH_ACK, d, 50);		   /* crosses 2^32 */
	peer(pisn + 51 + 20, iss + 1, TH_ACK, d + 70, 30); /* out of order, after the wrap */
	peer(pisn + 51, iss + 1, TH_ACK, d + 50, 20);
	CU_ASSERT_EQUAL(app.rx_len, 100);
	CU_ASSERT_EQUAL(memcmp(app.rx, d, 100), 0);
	CU_ASSERT_EQUAL(c->rcv_nxt, pisn + 101);
	CU_ASSERT(c->rcv_nxt < 100);
	th_clear(h);
	tcp_send(c, d, 100);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].seq, iss + 1);
	peer(pisn + 101, iss + 41, TH_ACK, NULL, 0); /* partial ACK across the wrap */
	CU_ASSERT_EQUAL(tcp_send_pending(c), 60);
	peer(pisn + 101, iss + 101, TH_ACK, NULL, 0);
	CU_ASSERT_EQUAL(tcp_send_pending(c), 0);
	/* A wrapped old segment is recognised as old, not as far future. */
	th_clear(h);
	peer(pisn + 1, iss + 101, TH_ACK, d, 10);
	CU_ASSERT_EQUAL(app.rx_len, 100);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].ack, pisn + 101);
	tcp_close(c);
	peer(pisn + 101, iss + 102, TH_ACK | TH_FIN, NULL, 0);
	CU_ASSERT_EQUAL(app.closed, 1);
	CU_ASSERT_EQUAL(app.why, TCP_CLOSE_NORMAL);
	teardown();
}

static void test_window_scaling(void)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.rcvbuf = 1 << 20;
	conf.sndbuf = 1 << 20;
	conf.wscale = 5;
	conf.max_conns = 8;
	conf.time_wait_max = 8;
	setup_conf(&conf);
	struct th_opts o = {.mss = 1460, .wscale = 3};
	uint32_t iss = th_passive_open(h, &app, PP, PEER_ISN, o);
	struct tcp_conn *c = app.c;
	CU_ASSERT_TRUE(c->ws_ok);
	CU_ASSERT_EQUAL(c->snd_wscale, 3);
	CU_ASSERT_EQUAL(c->rcv_wscale, 5);
	/* The ACK of the handshake had window 65535 << 3. */
	CU_ASSERT_EQUAL(c->snd_wnd, 65535u << 3);
	/* Our advertisement is scaled: 1 MiB >> 5. */
	peer(PEER_ISN + 1, iss + 1, TH_ACK, "x", 1);
	th_advance(h, 50000);
	CU_ASSERT_EQUAL_FATAL(h->ncap, 1);
	CU_ASSERT_EQUAL(h->cap[0].wnd, (1u << 20) >> 5);
	/* Large window: the peer may send far beyond 64 KiB unacknowledged. */
	static uint8_t big[300000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7);
	for (uint32_t off = 0; off < sizeof(big); off += 1460) {
		uint32_t n = sizeof(big) - off < 1460 ? (uint32_t)(sizeof(big) - off) : 1460;
		peer(PEER_ISN + 2 + off, iss + 1, TH_ACK, big + off, n);
	}
	CU_ASSERT_EQUAL(app.rx_len, 1 + sizeof(big));
	CU_ASSERT_EQUAL(memcmp(app.rx + 1, big, sizeof(big)), 0);
	/* Sending: the scaled 512 KiB peer window lets all 300 KB out at once. */
	peer(PEER_ISN + 2 + sizeof(big), iss + 1, TH_ACK, NULL, 0);
	c->cwnd = 1 << 20;
	th_clear(h);
	tcp_send(c, big, sizeof(big));
	uint32_t sent = 0;
	for (unsigned i = 0; i < h->ncap; i++)
		sent += h->cap[i].len;
	CU_ASSERT_EQUAL(sent, sizeof(big));
	peer(PEER_ISN + 2 + sizeof(big), iss + 1 + sizeof(big), TH_ACK, NULL, 0);
	th_clear(h);
	c->cwnd = 1 << 20;
	tcp_send(c, big, sizeof(big));
	tcp_send(c, big, sizeof(big));
	sent = 0;
	unsigned short_segs = 0;
	for (unsigned i = 0; i < h->ncap; i++) {
		sent += h->cap[i].len;
		short_segs += h->cap[i].len < h->cap[0].len;
	}
	/* Sender SWS avoidance: full segments, but for the end of the first
	 * send (it emptied the queue at that moment: no Nagle). */
	CU_ASSERT(short_segs <= 1);
	/* The scaled window, less the fragment too small to send alone. */
	CU_ASSERT(sent <= 65535u << 3);
	CU_ASSERT(sent > (65535u << 3) - h->cap[0].len);
	teardown();
}

static void test_mss_clamp(void)
{
	setup();
	struct th_opts o = {.mss = 536, .wscale = -1};
	th_passive_open(h, &app, PP, PEER_ISN, o);
	static uint8_t big[5000];
	tcp_send(app.c, big, sizeof(big));
	CU_ASSERT(h->ncap >= 9);
	for (unsigned i = 0; i < h->ncap; i++)
		CU_ASSERT(h->cap[i].len <= 536);
	teardown();
}

static CU_TestInfo sec_tests[] = {
	{"RST with SEQ == RCV.NXT resets", test_rst_exact_seq},
	{"in-window RST: challenge ACK", test_rst_in_window_challenge},
	{"out-of-window RST ignored", test_rst_out_of_window_ignored},
	{"SYN in ESTABLISHED: challenge ACK", test_syn_in_established_challenge},
	{"challenge ACK rate limit", test_challenge_ack_rate_limit},
	{"ACK validation", test_ack_validation},
	{"PAWS", test_paws},
	{"SYN cookies: backlog full, valid, forged, expired", test_syn_cookies},
	{"SYN cookies keep wscale/timestamps", test_syn_cookie_options},
	{"ISN keyed and monotonic", test_isn_keyed_and_monotonic},
	{"malformed headers and options", test_malformed_segments},
	{"sequence wraparound", test_wraparound_crafted},
	{"window scaling", test_window_scaling},
	{"MSS clamping", test_mss_clamp},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"tcp_security", NULL, NULL, NULL, NULL, sec_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}

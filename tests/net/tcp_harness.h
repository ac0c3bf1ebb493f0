/*
 * tcp_harness.h - shared helpers of the TCP unit suites (tests/net/test_tcp_*.c).
 *
 * A struct th_stack is one core's TCP without DPDK: a heap struct net_stack
 * whose tcp member comes from tcp_create(), with an output hook that
 * captures every segment (parsed) into an array.  th_send() crafts a segment
 * (header, options, payload) and feeds it to tcp_input().  struct th_app
 * records what the callbacks saw.  Everything is static inline so each
 * suite is one translation unit.
 */
#ifndef MX_TCP_HARNESS_H
#define MX_TCP_HARNESS_H

#include "net_internal.h"
#include "tcp.h"

#include <CUnit/CUnit.h>
#include <stdlib.h>
#include <string.h>

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10

#define TH_MAX_CAP 8192
#define TH_LOCAL 0x0a4d0002u  /* 10.77.0.2: the stack under test */
#define TH_REMOTE 0x0a4d0001u /* 10.77.0.1: the crafted peer */

struct th_seg {
	uint32_t src, dst;
	uint16_t sport, dport;
	uint32_t seq, ack;
	uint8_t flags;
	uint16_t wnd;
	uint16_t mss;
	int wscale;
	bool has_ts, sack_ok;
	uint32_t tsval, tsecr;
	unsigned nsack;
	uint32_t sack[4][2];
	uint32_t len; /* payload */
	uint8_t *data;
	size_t raw_len;
	uint8_t *raw;
};

struct th_stack;
typedef void (*th_output_hook)(struct th_stack *h, uint32_t src, uint32_t dst, const uint8_t *seg,
			       size_t len);

struct th_stack {
	struct net_stack st;
	struct tcp_state *ts;
	struct tcp_conf conf;
	uint64_t now;
	struct th_seg cap[TH_MAX_CAP];
	unsigned ncap;
	unsigned cap_overflow;
	th_output_hook hook; /* if set, called instead of capturing */
	void *hook_ctx;
	int drop_next; /* drop this many outgoing segments (loss injection) */
};

static inline uint16_t th_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t th_get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void th_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void th_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* Parse a segment emitted by the stack (test oracle, independent of tcp_input.c). */
static inline void th_parse(struct th_seg *s, uint32_t src, uint32_t dst, const uint8_t *p,
			    size_t len)
{
	memset(s, 0, sizeof(*s));
	s->src = src;
	s->dst = dst;
	s->sport = th_get16(p);
	s->dport = th_get16(p + 2);
	s->seq = th_get32(p + 4);
	s->ack = th_get32(p + 8);
	unsigned doff = (p[12] >> 4) * 4u;
	s->flags = p[13];
	s->wnd = th_get16(p + 14);
	s->wscale = -1;
	for (unsigned i = 20; i < doff;) {
		if (p[i] == 0)
			break;
		if (p[i] == 1) {
			i++;
			continue;
		}
		if (p[i] == 2)
			s->mss = th_get16(p + i + 2);
		if (p[i] == 3)
			s->wscale = p[i + 2];
		if (p[i] == 4)
			s->sack_ok = true;
		if (p[i] == 5)
			for (unsigned k = 0; k < (p[i + 1] - 2u) / 8 && k < 4; k++) {
				s->sack[k][0] = th_get32(p + i + 2 + 8 * k);
				s->sack[k][1] = th_get32(p + i + 6 + 8 * k);
				s->nsack = k + 1;
			}
		if (p[i] == 8) {
			s->has_ts = true;
			s->tsval = th_get32(p + i + 2);
			s->tsecr = th_get32(p + i + 6);
		}
		i += p[i + 1];
	}
	s->len = (uint32_t)(len - doff);
	s->raw = malloc(len);
	memcpy(s->raw, p, len);
	s->raw_len = len;
	s->data = s->raw + doff;
}

static inline int th_output(void *ctx, uint32_t src, uint32_t dst, const uint8_t *seg, size_t len)
{
	struct th_stack *h = ctx;
	CU_ASSERT(len >= 20);
	CU_ASSERT(seg[16] == 0 && seg[17] == 0); /* checksum left to IPv4 */
	if (h->drop_next > 0) {
		h->drop_next--;
		return 0;
	}
	if (h->hook) {
		h->hook(h, src, dst, seg, len);
		return 0;
	}
	if (h->ncap >= TH_MAX_CAP) {
		h->cap_overflow++;
		return -ENOBUFS;
	}
	th_parse(&h->cap[h->ncap++], src, dst, seg, len);
	return 0;
}

static inline void th_clear(struct th_stack *h)
{
	for (unsigned i = 0; i < h->ncap; i++)
		free(h->cap[i].raw);
	h->ncap = 0;
}

static inline struct th_seg *th_last(struct th_stack *h)
{
	return h->ncap ? &h->cap[h->ncap - 1] : NULL;
}

static inline struct tcp_stack_ops *th_ops(void)
{
	static struct tcp_stack_ops ops = {.output = th_output};
	return &ops;
}

/* A stack with test-friendly defaults; conf tweaks go in *conf before. */
static inline struct th_stack *th_new(const struct tcp_conf *conf, uint64_t seed)
{
	struct th_stack *h = calloc(1, sizeof(*h));
	if (conf) {
		h->conf = *conf;
	} else {
		tcp_conf_defaults(&h->conf);
		h->conf.time_wait_us = 1000000;
		h->conf.sndbuf = 64 * 1024;
		h->conf.rcvbuf = 64 * 1024;
		h->conf.max_conns = 1024;
		h->conf.time_wait_max = 1024;
	}
	h->now = 1000000;
	h->ts = tcp_create(&h->conf, th_ops(), h, seed);
	CU_ASSERT_PTR_NOT_NULL_FATAL(h->ts);
	h->st.tcp = h->ts;
	tcp_poll(h->ts, h->now);
	return h;
}

static inline void th_free(struct th_stack *h)
{
	th_clear(h);
	tcp_destroy(h->ts);
	free(h);
}

static inline uint64_t th_poll(struct th_stack *h)
{
	return tcp_poll(h->ts, h->now);
}

static inline void th_advance(struct th_stack *h, uint64_t us)
{
	h->now += us;
	tcp_poll(h->ts, h->now);
}

/* Options of a crafted segment. */
struct th_opts {
	uint16_t mss;
	int wscale; /* < 0: none */
	bool ts;
	uint32_t tsval, tsecr;
	bool sack_ok;
};

#define TH_NOOPTS ((struct th_opts){.wscale = -1})

/* Craft a segment from the remote peer and feed it to the stack. */
static inline void th_send_from(struct th_stack *h, uint32_t src, uint16_t sport, uint16_t dport,
				uint32_t seq, uint32_t ack, uint8_t flags, uint16_t wnd,
				struct th_opts o, const void *data, size_t len)
{
	uint8_t *b = malloc(60 + len);
	unsigned n = 20;
	if (o.mss) {
		b[n++] = 2;
		b[n++] = 4;
		th_put16(b + n, o.mss);
		n += 2;
	}
	if (o.wscale >= 0) {
		b[n++] = 1;
		b[n++] = 3;
		b[n++] = 3;
		b[n++] = (uint8_t)o.wscale;
	}
	if (o.sack_ok) {
		b[n++] = 1;
		b[n++] = 1;
		b[n++] = 4;
		b[n++] = 2;
	}
	if (o.ts) {
		b[n++] = 1;
		b[n++] = 1;
		b[n++] = 8;
		b[n++] = 10;
		th_put32(b + n, o.tsval);
		th_put32(b + n + 4, o.tsecr);
		n += 8;
	}
	th_put16(b, sport);
	th_put16(b + 2, dport);
	th_put32(b + 4, seq);
	th_put32(b + 8, ack);
	b[12] = (uint8_t)((n / 4) << 4);
	b[13] = flags;
	th_put16(b + 14, wnd);
	th_put16(b + 16, 0);
	th_put16(b + 18, 0);
	if (len)
		memcpy(b + n, data, len);
	tcp_input(h->ts, src, TH_LOCAL, b, n + len, h->now);
	free(b);
}

static inline void th_send(struct th_stack *h, uint16_t sport, uint16_t dport, uint32_t seq,
			   uint32_t ack, uint8_t flags, uint16_t wnd, struct th_opts o,
			   const void *data, size_t len)
{
	th_send_from(h, TH_REMOTE, sport, dport, seq, ack, flags, wnd, o, data, len);
}

/* ---- an app that records callbacks ------------------------------------- */

struct th_app {
	struct tcp_conn *c;
	uint8_t *rx;
	size_t rx_len, rx_cap;
	size_t consume_max; /* per on_data call; 0 = everything */
	bool paused;	    /* consume nothing */
	int connected, peer_closed, writable, closed;
	int why;
	int abort_on_data; /* call tcp_abort from on_data */
	int close_on_data; /* call tcp_close from on_data */
	int reply_on_data; /* echo data back */
	int accept_rc;
};

static inline void th_app_connected(struct tcp_conn *c, void *u)
{
	struct th_app *a = u;
	a->c = c;
	a->connected++;
}

static inline size_t th_app_data(struct tcp_conn *c, void *u, const uint8_t *d, size_t len)
{
	struct th_app *a = u;
	if (a->paused)
		return 0;
	size_t n = len;
	if (a->consume_max && n > a->consume_max)
		n = a->consume_max;
	if (a->rx_len + n > a->rx_cap) {
		a->rx_cap = (a->rx_len + n) * 2 + 4096;
		a->rx = realloc(a->rx, a->rx_cap);
	}
	memcpy(a->rx + a->rx_len, d, n);
	a->rx_len += n;
	if (a->reply_on_data)
		tcp_send(c, d, n);
	if (a->abort_on_data)
		tcp_abort(c);
	else if (a->close_on_data)
		tcp_close(c);
	return n;
}

static inline void th_app_writable(struct tcp_conn *c, void *u)
{
	(void)c;
	((struct th_app *)u)->writable++;
}

static inline void th_app_peer_closed(struct tcp_conn *c, void *u)
{
	(void)c;
	((struct th_app *)u)->peer_closed++;
}

static inline void th_app_closed(struct tcp_conn *c, void *u, enum tcp_close_reason why)
{
	struct th_app *a = u;
	(void)c;
	a->closed++;
	a->why = (int)why;
	a->c = NULL;
}

static const struct tcp_conn_ops th_app_ops = {
	.on_connected = th_app_connected,
	.on_data = th_app_data,
	.on_writable = th_app_writable,
	.on_peer_closed = th_app_peer_closed,
	.on_closed = th_app_closed,
};

static inline int th_accept(struct tcp_conn *c, void *ctx)
{
	struct th_app *a = ctx;
	a->c = c;
	a->connected++;
	tcp_conn_set_ops(c, &th_app_ops, a);
	return a->accept_rc;
}

static inline void th_app_free(struct th_app *a)
{
	free(a->rx);
	a->rx = NULL;
}

/*
 * Passive open on port 25 from REMOTE:sport with the given SYN options;
 * returns our ISS.  After it the connection is ESTABLISHED (app->c set).
 */
static inline uint32_t th_passive_open(struct th_stack *h, struct th_app *app, uint16_t sport,
				       uint32_t peer_isn, struct th_opts o)
{
	th_clear(h);
	th_send(h, sport, 25, peer_isn, 0, TH_SYN, 65535, o, NULL, 0);
	struct th_seg *sa = th_last(h);
	CU_ASSERT_PTR_NOT_NULL_FATAL(sa);
	CU_ASSERT_EQUAL(sa->flags, TH_SYN | TH_ACK);
	CU_ASSERT_EQUAL(sa->ack, peer_isn + 1);
	uint32_t iss = sa->seq;
	struct th_opts a = o;
	a.mss = 0;
	a.wscale = -1;
	a.tsecr = sa->tsval;
	th_send(h, sport, 25, peer_isn + 1, iss + 1, TH_ACK, 65535, a, NULL, 0);
	CU_ASSERT_PTR_NOT_NULL(app->c);
	th_clear(h);
	return iss;
}

#endif

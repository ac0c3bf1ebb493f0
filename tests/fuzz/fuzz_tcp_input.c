/*
 * fuzz_tcp_input.c - libFuzzer target for TCP segment processing.
 *
 * Each input is a script run against a fresh per-core TCP with a listener
 * on port 25 and one ESTABLISHED connection (crafted handshake).  The
 * script is a series of records:
 *
 *	u8 ctl   bit 0-1: target (0 listener, 1 the connection, 2 as-is, 3 api)
 *	         bit 2: make seq/ack relative to the connection's RCV.NXT/SND.UNA
 *	         bit 3-7: time advance, in ms (then tcp_poll)
 *	u8 len   segment length (the bytes follow)
 *
 * For target 3 the bytes drive the API instead (send, shutdown, resume,
 * close, abort, connect).  After every step the invariants of all live
 * connections are checked and a violation aborts.
 */
#include "net_internal.h"
#include "tcp_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOCAL 0x0a4d0002u
#define REMOTE 0x0a4d0001u

static struct tcp_conn *live;
static size_t rx_total;

static int out(void *ctx, uint32_t src, uint32_t dst, const uint8_t *seg, size_t len)
{
	(void)ctx, (void)src, (void)dst;
	if (len < 20 || len > 20 + 40 + 65535 || seg[16] || seg[17])
		abort();
	unsigned doff = (unsigned)(seg[12] >> 4) * 4;
	if (doff < 20 || doff > len)
		abort();
	return 0;
}

static size_t on_data(struct tcp_conn *c, void *u, const uint8_t *d, size_t len)
{
	(void)c, (void)u, (void)d;
	rx_total += len;
	return len > 3 ? len - 3 : len; /* leave a few bytes buffered */
}

static void on_closed(struct tcp_conn *c, void *u, enum tcp_close_reason why)
{
	(void)u, (void)why;
	if (c == live)
		live = NULL;
}

static const struct tcp_conn_ops ops = {.on_data = on_data, .on_closed = on_closed};

static int on_accept(struct tcp_conn *c, void *ctx)
{
	(void)ctx;
	tcp_conn_set_ops(c, &ops, NULL);
	if (!live)
		live = c;
	return 0;
}

static void check(struct tcp_state *ts)
{
	if (ts->conn_count > ts->conf.max_conns || ts->tw_count > ts->conf.time_wait_max)
		abort();
	if (ts->reass_global > ts->conf.reass_global_bytes)
		abort();
	uint64_t reass = 0;
	for (uint32_t i = 0; i <= ts->conn_mask; i++) {
		for (struct tcp_conn *c = ts->conn_tab[i]; c; c = c->hnext) {
			if (c->dead || c->sbuf_len > c->sbuf_size || c->rbuf_len > c->rbuf_size)
				abort();
			if (c->reass_count > TCP_REASS_RANGES ||
			    c->reass_bytes > ts->conf.reass_conn_bytes)
				abort();
			if (SEQ_GT(c->snd_una, c->snd_max) || SEQ_GT(c->snd_nxt, c->snd_max))
				abort();
			if (c->rbuf_head >= c->rbuf_size || c->sbuf_head >= c->sbuf_size)
				abort();
			if (c->mss > ts->conf.mss || c->mss < 1)
				abort();
			for (unsigned k = 0; k < c->reass_count; k++) {
				if (!SEQ_GT(c->reass[k].start, c->rcv_nxt) ||
				    !SEQ_LT(c->reass[k].start, c->reass[k].end))
					abort();
				/* islands lie inside the receive buffer */
				if (c->reass[k].end - c->rcv_nxt > c->rbuf_size - c->rbuf_len)
					abort();
			}
			reass += c->reass_bytes;
		}
	}
	if (reass != ts->reass_global)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tcp_conf conf;
	tcp_conf_defaults(&conf);
	conf.max_conns = 16;
	conf.time_wait_max = 4;
	conf.sndbuf = 4096;
	conf.rcvbuf = 4096;
	conf.syn_backlog = 2;
	conf.reass_conn_bytes = 2000;
	conf.reass_global_bytes = 3000;
	conf.time_wait_us = 2000000;
	conf.data_retries = 3;
	conf.syn_retries = 2;
	conf.mss = 200; /* small: more segments per input */
	struct tcp_stack_ops sops = {.output = out};
	struct tcp_state *ts = tcp_create(&conf, &sops, NULL, 42);
	if (!ts)
		return 0;
	struct net_stack st = {.tcp = ts};
	uint64_t now = 1000000;
	live = NULL;
	rx_total = 0;
	tcp_poll(ts, now);
	tcp_listen(&st, 0, 25, on_accept, NULL);
	/* Handshake of the established connection: peer ISN 5000, MSS 1460,
	 * SACK permitted (so that our SACK blocks are exercised too). */
	uint8_t syn[28] = {0x9c, 0x40, 0, 25, 0, 0, 0x13, 0x88, 0,    0,    0, 0, 7 << 4, 0x02,
			   0xff, 0xff, 0, 0,  0, 0, 2,	  4,	0x05, 0xb4, 1, 1, 4,	  2};
	tcp_input(ts, REMOTE, LOCAL, syn, sizeof(syn), now);
	struct tcp_conn *c0 = tcp_conn_lookup(ts, LOCAL, 25, REMOTE, 40000);
	if (c0) {
		uint32_t ack = c0->iss + 1;
		uint8_t a[20] = {0x9c,
				 0x40,
				 0,
				 25,
				 0,
				 0,
				 0x13,
				 0x89,
				 (uint8_t)(ack >> 24),
				 (uint8_t)(ack >> 16),
				 (uint8_t)(ack >> 8),
				 (uint8_t)ack,
				 5 << 4,
				 0x10,
				 0xff,
				 0xff};
		tcp_input(ts, REMOTE, LOCAL, a, sizeof(a), now);
	}
	size_t i = 0;
	uint8_t seg[256];
	while (i + 2 <= size) {
		uint8_t ctl = data[i], len = data[i + 1];
		i += 2;
		if (len > size - i)
			len = (uint8_t)(size - i);
		memcpy(seg, data + i, len);
		i += len;
		unsigned target = ctl & 3;
		if (target == 3) {
			uint8_t op = len ? seg[0] : 0;
			if (live) {
				switch (op % 6) {
				case 0:
					tcp_send(live, seg, len);
					break;
				case 1:
					tcp_shutdown(live);
					break;
				case 2:
					tcp_recv_resume(live);
					break;
				case 3:
					tcp_close(live);
					live = NULL; /* only on_closed may follow */
					break;
				case 4:
					tcp_abort(live);
					break;
				default:
					(void)tcp_send_space(live);
					(void)tcp_send_pending(live);
				}
			} else if (op % 6 == 5) {
				live = tcp_connect(&st, LOCAL, 0, REMOTE, 25, &ops, NULL);
			}
		} else if (len >= 20) {
			if (target == 0) {
				seg[2] = 0;
				seg[3] = 25;
			} else if (target == 1 && live) {
				seg[0] = (uint8_t)(live->rport >> 8);
				seg[1] = (uint8_t)live->rport;
				seg[2] = (uint8_t)(live->lport >> 8);
				seg[3] = (uint8_t)live->lport;
				if (ctl & 4) {
					uint32_t s = live->rcv_nxt + (seg[6] << 8 | seg[7]) - 0x100;
					uint32_t a =
						live->snd_una + (seg[10] << 8 | seg[11]) - 0x100;
					for (int k = 0; k < 4; k++) {
						seg[4 + k] = (uint8_t)(s >> (24 - 8 * k));
						seg[8 + k] = (uint8_t)(a >> (24 - 8 * k));
					}
				}
			}
			tcp_input(ts, REMOTE, LOCAL, seg, len, now);
		} else {
			tcp_input(ts, REMOTE, LOCAL, seg, len, now); /* short: must be refused */
		}
		check(ts);
		now += (uint64_t)(ctl >> 3) * 1000;
		uint64_t next = tcp_poll(ts, now);
		if (next < now)
			abort();
		check(ts);
	}
	/* Let the timers run (retransmissions give up, TIME_WAIT expires). */
	for (int k = 0; k < 30; k++) {
		now += 5000000;
		tcp_poll(ts, now);
		check(ts);
	}
	if (live)
		tcp_abort(live);
	tcp_destroy(ts);
	return 0;
}

/*
 * fuzz_queue_sched.c - libFuzzer target for lib/queue: the input is a script
 * of scheduler events (submits to a few destinations, polls with a moving
 * clock, route results, connection up/down with a pipelining depth (several
 * transactions in flight per session), per-recipient SMTP codes with
 * hostile reply text, stale handles), and, at the end, the same bytes as the
 * original message and diagnostic of a DSN.  Checks that gauges never wrap
 * and every DSN line stays under 998 octets; ASan/UBSan do the rest.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "queue.h"

struct in {
	const uint8_t *p;
	size_t n;
};

static uint8_t take(struct in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

static struct in g_body;

static long rd(void *ctx, const struct queue_desc *d, uint64_t off, void *buf, size_t len)
{
	(void)ctx, (void)d;
	if (off >= g_body.n)
		return 0;
	if (len > g_body.n - off)
		len = g_body.n - off;
	memcpy(buf, g_body.p + off, len);
	return (long)len;
}

static long mem_read(void *arg, uint64_t off, void *buf, size_t len)
{
	return rd(arg, NULL, off, buf, len);
}

static void check_lines(const char *data, size_t len)
{
	size_t col = 0;
	for (size_t i = 0; i < len; i++) {
		col = data[i] == '\n' ? 0 : col + 1;
		if (col >= 999)
			abort();
	}
}

static int dsn_out(void *ctx, const struct queue_desc *d, const char *rcpt, const char *data,
		   size_t len)
{
	(void)ctx, (void)d, (void)rcpt;
	check_lines(data, len);
	return 0;
}

static const struct queue_ops OPS = {.read_body = rd, .dsn_send = dsn_out};

static const char *const RCPTS[] = {"a@x.example",  "b@X.EXAMPLE",   "c@[192.0.2.1]", "d@y.example",
				    "e@[IPv6:::1]", "f@[192.0.2.2]", "bad",	      ""};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = {data, size};
	struct queue_config c;
	struct queue_action act[32];
	uint64_t sess[16] = {0}, dests[8] = {0};
	int64_t now = 1700000000LL * 1000000;
	struct queue_counters k;
	char text[64];

	mx_log_set_level(MX_LOG_ERR);
	queue_config_defaults(&c);
	c.max_connections = 1 + (take(&in) & 3);
	c.msgs_per_connection = 1 + (take(&in) & 3);
	c.rcpts_per_txn = 1 + (take(&in) & 3);
	c.msgs_per_second = take(&in) & 3;
	c.max_sessions = 1 + (take(&in) & 7);
	c.max_destinations = 1 + (take(&in) & 7);
	c.max_transactions = 1 + take(&in);
	c.pipeline_depth = 1 + c.max_transactions % QUEUE_PIPELINE_MAX;
	c.connection_budget = (c.max_transactions / QUEUE_PIPELINE_MAX) % 4; /* 0 = none */
	c.max_age_us = 3600ull * 1000000;
	g_body = (struct in){data, size};
	struct queue *q = queue_create(&c, &OPS, NULL);
	if (!q)
		return 0;
	for (unsigned step = 0; step < 400 && in.n; step++) {
		uint8_t op = take(&in);
		switch (op % 8) {
		case 0: { /* submit */
			struct spool_rcpt r[4];
			unsigned n = 1 + (take(&in) & 3);
			for (unsigned i = 0; i < n; i++)
				r[i] = (struct spool_rcpt){RCPTS[take(&in) & 7], NULL,
							   take(&in) & 15};
			struct spool_envelope env = {.sender = (op & 8) ? "" : "s@f",
						     .rcpts = r,
						     .rcpt_count = n,
						     .ret = take(&in) % 3,
						     .arrival_us = now};
			struct queue_desc *d[4];
			int nd = queue_split(&c, step, &env, NULL, NULL, size, d, 4);
			for (int i = 0; i < nd; i++)
				if (queue_submit(q, d[i], (op & 16) ? now + 1000000 : 0, now) != 0)
					queue_desc_free(d[i]);
			break;
		}
		case 1: { /* poll */
			now += (int64_t)take(&in) * 1000000 * ((op & 8) ? 60 : 1);
			int na = queue_poll(q, now, act, 32);
			for (int i = 0; i < na; i++) {
				/* a SEND or CLOSE carries what set_user gave, or NULL */
				if (act[i].user != NULL && act[i].user != &sess[0])
					abort();
				if (act[i].type == QUEUE_ACT_RESOLVE)
					dests[take(&in) & 7] = act[i].dest;
				else if (act[i].type != QUEUE_ACT_CLOSE)
					sess[take(&in) & 15] = act[i].session;
			}
			break;
		}
		case 2: { /* route result */
			struct dns_mail_route r = {0};
			r.result = take(&in) % 3;
			r.reply = r.result == DNS_MAIL_PERMFAIL ? 550 : 451;
			r.host_count = take(&in) % 3;
			snprintf(r.status, sizeof(r.status), "%d.%d.%d", (take(&in) & 1) ? 5 : 4,
				 take(&in) % 8, take(&in));
			r.reason = "no route";
			queue_route_result(q, dests[take(&in) & 7], &r, now);
			break;
		}
		case 3: {
			uint64_t h = sess[take(&in) & 15];
			queue_conn_depth(q, h, op >> 4); /* 0..15: capped by pipeline_depth */
			queue_session_set_user(q, h, &sess[0]);
			queue_conn_up(q, h, "mx", 1, 25, now);
			break;
		}
		case 4:
			queue_conn_down(q, sess[take(&in) & 15], "gone\r\nx", now);
			break;
		case 5: { /* transaction result */
			struct queue_rcpt_result res[4];
			unsigned n = take(&in) % 5;
			for (unsigned i = 0; i < n; i++) {
				static const uint16_t codes[] = {250, 251, 450, 451,
								 550, 552, 0,	354};
				uint8_t b = take(&in);
				snprintf(text, sizeof(text), "%u x\x01\xff\r\n%c", codes[b & 7], b);
				res[i] = (struct queue_rcpt_result){
					codes[b & 7], (b & 8) ? "5.1.1" : "9.x", text};
			}
			queue_txn_result(q, sess[take(&in) & 15], res, n, now);
			break;
		}
		case 6: /* stale or random handles */
			queue_conn_up(q, ((uint64_t)take(&in) << 32) | take(&in), "h", 1, 25, now);
			queue_route_result(q, take(&in), NULL, now);
			queue_conn_depth(q, ((uint64_t)take(&in) << 32) | take(&in), 2);
			break;
		default:
			now += 1000000;
			break;
		}
		queue_get_counters(q, &k);
		if (k.queued > 1u << 30 || k.in_flight > 1u << 30 ||
		    k.conns_open > c.max_sessions || k.dests > c.max_destinations)
			abort();
	}
	queue_destroy(q);

	/* The same bytes as original message and remote diagnostic of a DSN. */
	struct queue_dsn_rcpt r = {
		"rcpt@example.com", "rfc822;a+2Bb", QUEUE_DSN_FAILED, "5.0.0", "mx", NULL, now, 0};
	char *diag = malloc(size + 1), *msg = NULL;
	size_t len;
	if (!diag)
		return 0;
	memcpy(diag, data, size);
	diag[size] = 0;
	r.diagnostic = diag;
	struct queue_dsn_params p = {.reporting_mta = "relay.test",
				     .sender = "s@f",
				     .ret = (size & 1) ? SPOOL_RET_FULL : SPOOL_RET_HDRS,
				     .now_us = now,
				     .rcpts = &r,
				     .rcpt_count = 1,
				     .reader = mem_read,
				     .body_len = size,
				     .max_full_bytes = 4096,
				     .max_header_bytes = 1024};
	g_body = (struct in){data, size};
	if (queue_dsn_build(&p, &msg, &len) == 0)
		check_lines(msg, len);
	free(msg);
	free(diag);
	return 0;
}

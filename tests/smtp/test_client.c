/*
 * test_client.c - the outbound SMTP client (lib/smtp/client.c): reply parser,
 * scripted conversations, and a round trip against the server session.
 *
 * run_script() plays a server: each step feeds reply bytes and checks the
 * exact bytes the client wrote in answer.  Every script runs four times: the
 * replies in one segment, byte by byte, at random split points, and with a
 * transport that takes only 7 bytes per send (backpressure, drained through
 * smtp_client_writable); the output and the callback log must be the same
 * each time.  (The slow transport stalls after 7 bytes until the next
 * writable round, so the client keeps a partly sent buffer.)
 */
#include "smtp.h"
#include "mx_test.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OUT_CAP (1 << 20)
#define EV_CAP 8192
#define TLS_STEP "\x01"	    /* step: the handshake finished */
#define TIMEOUT_STEP "\x02" /* step: the deadline passed */
#define QUIT_STEP "\x03"    /* step: smtp_client_quit() */
#define ABORT_STEP "\x04"   /* step: smtp_client_abort() (the transport lost the connection) */

/*
 * Pipelining across transactions: the harness submits messages as a delivery
 * loop does, whenever the client has room (after every step and at every
 * message_done), not only one after the other.
 */
static bool g_fill;

static uint64_t g_now = 1000000;

static uint64_t clock_us(void)
{
	return g_now;
}

struct body {
	const char *p;
	size_t n;
	long fail_at; /* read at this offset fails; -1 never */
};

static long body_read(void *user, uint64_t off, uint8_t *buf, size_t len)
{
	struct body *b = user;

	if (b->fail_at >= 0 && off >= (uint64_t)b->fail_at)
		return -EIO;
	if (off >= b->n)
		return 0;
	if (len > b->n - off)
		len = b->n - (size_t)off;
	if (len > 1000) /* short reads are allowed: the client must loop */
		len = 1000;
	memcpy(buf, b->p + off, len);
	return (long)len;
}

struct ct {
	char out[OUT_CAP];
	size_t out_len, out_seen;
	char ev[EV_CAP];
	size_t ev_len;
	size_t send_limit; /* bytes the transport takes per writable round; 0: all */
	size_t budget;
	bool blocked; /* the transport takes nothing */
	struct smtp_client *c;
	struct smtp_client_stats st;
	const struct smtp_client_msg *const *msgs;
	size_t nmsgs, next_msg, ndone;
	bool quit;
	struct smtp_client_result last; /* copy of the last result (rcpts not kept) */
	bool late;	/* submit after each step only, never from inside message_done */
	unsigned sends; /* transport writes that took bytes */
	size_t seg_off; /* where the last of them starts in out */
};

static void evf(struct ct *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void evf(struct ct *t, const char *fmt, ...)
{
	va_list ap;

	if (t->ev_len >= EV_CAP - 1)
		return;
	va_start(ap, fmt);
	int n = vsnprintf(t->ev + t->ev_len, EV_CAP - t->ev_len, fmt, ap);
	va_end(ap);
	if (n > 0)
		t->ev_len += (size_t)n < EV_CAP - t->ev_len ? (size_t)n : EV_CAP - 1 - t->ev_len;
}

static size_t cb_send(void *user, const uint8_t *p, size_t n)
{
	struct ct *t = user;

	CU_ASSERT_TRUE(n > 0);
	if (t->blocked)
		return 0;
	if (t->send_limit) {
		if (n > t->budget)
			n = t->budget;
		t->budget -= n;
		if (n == 0)
			return 0;
	}
	if (t->out_len + n >= OUT_CAP)
		return 0;
	t->sends++;
	t->seg_off = t->out_len;
	memcpy(t->out + t->out_len, p, n);
	t->out_len += n;
	t->out[t->out_len] = '\0';
	return n;
}

static void cb_starttls(void *user)
{
	evf(user, "T;");
}

static void cb_ready(void *user)
{
	evf(user, "R;");
}

/* Submit while the client takes messages (-EBUSY: no room now). */
static void fill(struct ct *t)
{
	while (t->next_msg < t->nmsgs) {
		int rc = smtp_client_send_message(t->c, t->msgs[t->next_msg]);
		if (rc == -EBUSY)
			return;
		t->next_msg++;
		if (rc)
			evf(t, "E%d;", rc);
	}
}

static void submit_next(struct ct *t)
{
	if (g_fill) {
		fill(t);
		/* QUIT once everything is reported: a QUIT asked earlier would stop
		 * the pipelining of what is still to start */
		if (t->quit && t->ndone == t->nmsgs)
			smtp_client_quit(t->c);
		return;
	}
	if (t->next_msg < t->nmsgs) {
		int rc = smtp_client_send_message(t->c, t->msgs[t->next_msg++]);
		if (rc)
			evf(t, "E%d;", rc);
	} else if (t->quit) {
		smtp_client_quit(t->c);
	}
}

static void cb_done(void *user, const struct smtp_client_result *r)
{
	struct ct *t = user;
	static const char letters[] = "DTB";

	t->last = *r;
	t->ndone++;
	evf(t, "M");
	for (size_t i = 0; i < r->rcpt_count; i++) {
		const struct smtp_client_rcpt_result *rr = &r->rcpts[i];
		evf(t, " %c%u/%s", letters[rr->outcome], rr->final.code, rr->final.status);
		CU_ASSERT_TRUE(strlen(rr->final.text) == rr->final.text_len);
	}
	evf(t, ";");
	CU_ASSERT_EQUAL(r->delivered + r->deferred + r->bounced, r->rcpt_count);
	if (!t->late)
		submit_next(t);
}

static void cb_failed(void *user, const struct smtp_reply *why)
{
	evf(user, "F%u/%s;", why->code, why->status);
}

static void cb_closed(void *user)
{
	evf(user, "C;");
}

static const struct smtp_client_cb ccb = {
	.send = cb_send,
	.starttls = cb_starttls,
	.ready = cb_ready,
	.message_done = cb_done,
	.failed = cb_failed,
	.closed = cb_closed,
};

static struct smtp_client_conf cconf(void)
{
	struct smtp_client_conf c;

	smtp_client_conf_defaults(&c);
	c.helo_name = "client.test";
	c.tls = SMTP_CLIENT_TLS_NONE;
	c.now_us = clock_us;
	return c;
}

struct step {
	const char *srv;
	const char *cli;
};

static unsigned g_rng;

static unsigned rnd(void)
{
	g_rng = g_rng * 1103515245u + 12345u;
	return g_rng >> 16;
}

/* With a slow transport, drain like an event loop would: a few bytes per round. */
static void drain(struct ct *t)
{
	for (int i = 0; i < 1000000 && t->send_limit; i++) {
		size_t before = t->out_len;
		t->budget = t->send_limit;
		smtp_client_writable(t->c);
		if (t->out_len == before)
			break;
	}
}

static void feed(struct ct *t, const char *s, int mode)
{
	size_t n = strlen(s), off = 0;

	while (off < n) {
		size_t k = n - off;
		if (mode == 1)
			k = 1;
		else if (mode == 2)
			k = 1 + rnd() % (k < 9 ? k : 9);
		int rc = smtp_client_input(t->c, (const uint8_t *)s + off, k);
		off += k;
		drain(t);
		if (rc < 0)
			break;
	}
}

/* Runs steps in four modes; returns the mode-0 stats in *st if given. */
static void run_script(const char *name, const struct smtp_client_conf *conf,
		       const struct smtp_client_msg *const *msgs, size_t nmsgs, bool quit,
		       const struct step *steps, const char *expect_ev,
		       struct smtp_client_stats *st)
{
	for (int mode = 0; mode < 4; mode++) {
		struct ct *t = calloc(1, sizeof(*t));

		g_rng = 42;
		t->msgs = msgs;
		t->nmsgs = nmsgs;
		t->quit = quit;
		t->send_limit = mode == 3 ? 7 : 0;
		CU_ASSERT_EQUAL_FATAL(smtp_client_new(conf, &ccb, t, &t->st, &t->c), 0);
		submit_next(t);
		smtp_client_start(t->c, false);
		CU_ASSERT_EQUAL(t->out_len, 0);
		for (size_t i = 0; steps[i].srv; i++) {
			if (strcmp(steps[i].srv, TLS_STEP) == 0)
				smtp_client_tls_started(t->c);
			else if (strcmp(steps[i].srv, TIMEOUT_STEP) == 0)
				smtp_client_timeout(t->c);
			else if (strcmp(steps[i].srv, QUIT_STEP) == 0)
				smtp_client_quit(t->c);
			else if (strcmp(steps[i].srv, ABORT_STEP) == 0)
				smtp_client_abort(t->c, "gone");
			else
				feed(t, steps[i].srv, mode);
			if (g_fill && !smtp_client_is_dead(t->c))
				fill(t);
			drain(t);
			const char *got = t->out + t->out_seen;
			if (strcmp(got, steps[i].cli) != 0) {
				fprintf(stderr,
					"\n%s mode %d step %zu:\n--- want\n%s\n--- got\n%s\n", name,
					mode, i, steps[i].cli, got);
				CU_FAIL("client output differs");
			}
			t->out_seen = t->out_len;
		}
		if (strcmp(t->ev, expect_ev) != 0) {
			fprintf(stderr, "\n%s mode %d events: want \"%s\" got \"%s\"\n", name, mode,
				expect_ev, t->ev);
			CU_FAIL("events differ");
		}
		if (st && mode == 0)
			*st = t->st;
		smtp_client_free(t->c);
		free(t);
	}
}

/* ---- messages used by the scripts ---- */

#define BODY1 "Subject: t\r\n\r\n.dot\r\nline\r\n..\r\n.\r\nlast"
#define BODY1_STUFFED "Subject: t\r\n\r\n..dot\r\nline\r\n...\r\n..\r\nlast\r\n.\r\n"

static struct body g_b1 = {BODY1, sizeof(BODY1) - 1, -1};
static const struct smtp_client_rcpt g_r2[] = {{"a@x.test", 0, NULL}, {"b@x.test", 0, NULL}};
static const struct smtp_client_msg g_m1 = {
	.sender = "dev@fleet.test",
	.rcpts = g_r2,
	.rcpt_count = 2,
	.body_len = sizeof(BODY1) - 1,
	.body_read = body_read,
	.body_user = &g_b1,
};
static const struct smtp_client_msg *const g_one[] = {&g_m1};
static const struct smtp_client_msg *const g_two[] = {&g_m1, &g_m1};

#define GREET "220 mx.test ESMTP\r\n"
#define EHLO "EHLO client.test\r\n"
#define EHLO_BASIC "250-mx.test\r\n250 8BITMIME\r\n"
#define EHLO_PIPE "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
#define MAIL1 "MAIL FROM:<dev@fleet.test>\r\n"
#define RCPTA "RCPT TO:<a@x.test>\r\n"
#define RCPTB "RCPT TO:<b@x.test>\r\n"
#define OK "250 2.0.0 Ok\r\n"

/* ---- reply parser ---- */

static int parse_all(struct smtp_reply_parser *p, const char *s, size_t seg, int *lines)
{
	size_t n = strlen(s), off = 0;
	int rc = SMTP_REPLY_MORE;

	*lines = 0;
	smtp_reply_parser_init(p);
	while (off < n) {
		size_t used = 0, k = n - off < seg ? n - off : seg;
		rc = smtp_reply_parse(p, (const uint8_t *)s + off, k, &used);
		CU_ASSERT_TRUE(used <= k);
		off += used;
		if (rc < 0)
			return rc;
		if (rc == SMTP_REPLY_LINE || rc == SMTP_REPLY_DONE)
			(*lines)++;
		if (rc == SMTP_REPLY_DONE)
			return off == n ? rc : -1000;
	}
	return rc;
}

static void test_reply_parser(void)
{
	struct smtp_reply_parser p;
	int lines;
	const char *multi = "250-mx.test greets you\r\n250-PIPELINING\r\n250 2.0.0 SIZE 100\r\n";

	for (size_t seg = 1; seg <= strlen(multi); seg++) {
		CU_ASSERT_EQUAL(parse_all(&p, multi, seg, &lines), SMTP_REPLY_DONE);
		CU_ASSERT_EQUAL(lines, 3);
		CU_ASSERT_EQUAL(p.reply.code, 250);
		CU_ASSERT_EQUAL(p.reply.lines, 3);
		CU_ASSERT_STRING_EQUAL(p.reply.text, "mx.test greets you PIPELINING SIZE 100");
		CU_ASSERT_STRING_EQUAL(p.reply.status, "");
	}
	CU_ASSERT_EQUAL(parse_all(&p, "550 5.1.1 <a@b>: no such user\r\n", 1, &lines),
			SMTP_REPLY_DONE);
	CU_ASSERT_EQUAL(p.reply.code, 550);
	CU_ASSERT_STRING_EQUAL(p.reply.status, "5.1.1");
	CU_ASSERT_STRING_EQUAL(p.reply.text, "<a@b>: no such user");
	/* class mismatch: not an enhanced code, kept as text */
	CU_ASSERT_EQUAL(parse_all(&p, "550 4.1.1 x\r\n", 100, &lines), SMTP_REPLY_DONE);
	CU_ASSERT_STRING_EQUAL(p.reply.status, "");
	CU_ASSERT_STRING_EQUAL(p.reply.text, "4.1.1 x");
	/* bare code, bare LF, control characters made safe */
	CU_ASSERT_EQUAL(parse_all(&p, "250\n", 100, &lines), SMTP_REPLY_DONE);
	CU_ASSERT_EQUAL(p.reply.code, 250);
	CU_ASSERT_EQUAL(parse_all(&p, "451 a\tb\x01\xff\r\n", 100, &lines), SMTP_REPLY_DONE);
	CU_ASSERT_STRING_EQUAL(p.reply.text, "a?b??");
	/* malformed */
	CU_ASSERT_EQUAL(parse_all(&p, "25\r\n", 100, &lines), -EPROTO);
	CU_ASSERT_EQUAL(parse_all(&p, "250x\r\n", 100, &lines), -EPROTO);
	CU_ASSERT_EQUAL(parse_all(&p, "150 x\r\n", 100, &lines), -EPROTO);
	CU_ASSERT_EQUAL(parse_all(&p, "260 x\r\n", 100, &lines), -EPROTO);
	CU_ASSERT_EQUAL(parse_all(&p, "2a0 x\r\n", 100, &lines), -EPROTO);
	CU_ASSERT_EQUAL(parse_all(&p, "250-a\r\n251 b\r\n", 100, &lines), -EPROTO);
	CU_ASSERT_EQUAL(parse_all(&p, "\r\n", 100, &lines), -EPROTO);
	/* 512 bytes with CRLF is the limit */
	char big[700];
	memset(big, 'x', sizeof(big));
	memcpy(big, "250 ", 4);
	memcpy(big + 510, "\r\n", 3);
	CU_ASSERT_EQUAL(parse_all(&p, big, 1, &lines), SMTP_REPLY_DONE);
	CU_ASSERT_EQUAL(p.reply.text_len, 506);
	memset(big, 'x', sizeof(big));
	memcpy(big, "250 ", 4);
	memcpy(big + 511, "\r\n", 3);
	CU_ASSERT_EQUAL(parse_all(&p, big, 1, &lines), -EMSGSIZE);
	CU_ASSERT_EQUAL(parse_all(&p, big, 700, &lines), -EMSGSIZE);
	/* 100 lines are fine, 101 are not */
	static char many[101 * 16 + 1];
	size_t o = 0;
	for (int i = 0; i < 99; i++)
		o += (size_t)sprintf(many + o, "250-abcdefghij\r\n");
	sprintf(many + o, "250 abcdefghij\r\n");
	CU_ASSERT_EQUAL(parse_all(&p, many, 3, &lines), SMTP_REPLY_DONE);
	CU_ASSERT_EQUAL(lines, 100);
	CU_ASSERT_EQUAL(p.reply.text_len, SMTP_REPLY_TEXT_MAX - 1); /* cut, not overflowed */
	o = 0;
	for (int i = 0; i < 100; i++)
		o += (size_t)sprintf(many + o, "250-abcdefghij\r\n");
	sprintf(many + o, "250 abcdefghij\r\n");
	CU_ASSERT_EQUAL(parse_all(&p, many, 5, &lines), -EMSGSIZE);
	/* two replies back to back: the parser stops after the first */
	size_t used;
	smtp_reply_parser_init(&p);
	CU_ASSERT_EQUAL(smtp_reply_parse(&p, (const uint8_t *)"250 a\r\n354 b\r\n", 14, &used),
			SMTP_REPLY_DONE);
	CU_ASSERT_EQUAL(used, 7);
	CU_ASSERT_EQUAL(smtp_reply_parse(&p, (const uint8_t *)"354 b\r\n", 7, &used),
			SMTP_REPLY_DONE);
	CU_ASSERT_EQUAL(p.reply.code, 354);
	CU_ASSERT_STRING_EQUAL(p.reply.text, "b");
}

/* ---- conversations ---- */

/*
 * One message, each command waiting for its reply: a server without
 * PIPELINING (ehlo = EHLO_BASIC), or one offering it to a client told not
 * to use it (EHLO_PIPE with no_pipelining).
 */
static void one_at_a_time(const char *name, const char *ehlo, bool no_pipelining)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_stats st;
	conf.no_pipelining = no_pipelining;
	const struct step s[] = {
		{GREET, EHLO},
		{ehlo, MAIL1},
		{"250 2.1.0 Ok\r\n", RCPTA},
		{"250 2.1.5 Ok\r\n", RCPTB},
		{"250 2.1.5 Ok\r\n", "DATA\r\n"},
		{"354 go ahead\r\n", BODY1_STUFFED},
		{"250 2.0.0 Ok: queued as X\r\n", "QUIT\r\n"},
		{"221 2.0.0 Bye\r\n", ""},
		{NULL, NULL},
	};
	run_script(name, &conf, g_one, 1, true, s, "R;M D250/2.0.0 D250/2.0.0;C;", &st);
	CU_ASSERT_EQUAL(st.data_messages, 1);
	CU_ASSERT_EQUAL(st.pipelined_flights, 0);
	CU_ASSERT_EQUAL(st.messages_sent, 1);
	CU_ASSERT_EQUAL(st.rcpts_delivered, 2);
	CU_ASSERT_EQUAL(st.body_bytes, sizeof(BODY1) - 1);
}

static void test_basic_data(void)
{
	one_at_a_time("basic_data", EHLO_BASIC, false);
}

/* no_pipelining: PIPELINING offered, and still one command a reply. */
static void test_no_pipelining(void)
{
	one_at_a_time("no_pipelining", EHLO_PIPE, true);
}

static void test_pipelined_partial(void)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_stats st;
	const struct step s[] = {
		{GREET, EHLO},
		{EHLO_PIPE, MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n250 2.1.5 Ok\r\n354 go\r\n",
		 BODY1_STUFFED},
		{"250 2.0.0 Ok\r\n", "QUIT\r\n"},
		{"221 Bye\r\n", ""},
		{NULL, NULL},
	};
	run_script("pipelined_partial", &conf, g_one, 1, true, s, "R;M B550/5.1.1 D250/2.0.0;C;",
		   &st);
	CU_ASSERT_EQUAL(st.pipelined_flights, 1);
	CU_ASSERT_EQUAL(st.rcpts_bounced, 1);
	CU_ASSERT_EQUAL(st.rcpts_delivered, 1);
	CU_ASSERT_EQUAL(st.messages_sent, 1);
	CU_ASSERT_EQUAL(st.messages_bounced, 1);
}

/* Dot-stuffing edge cases: empty body, lone dot, bare LF/CR, CRLF split over reads. */
static void test_dot_stuffing(void)
{
	static const struct {
		const char *body, *wire;
	} cases[] = {
		{"", ".\r\n"},
		{".", "..\r\n.\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{"a\n.b\rc\r", "a\r\n..b\r\nc\r\n.\r\n"},
		{"x\r\n\r\n.\r\n.", "x\r\n\r\n..\r\n..\r\n.\r\n"},
	};
	struct smtp_client_conf conf = cconf();

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct body b = {cases[i].body, strlen(cases[i].body), -1};
		struct smtp_client_rcpt r = {"a@x.test", 0, NULL};
		struct smtp_client_msg m = {.sender = "",
					    .rcpts = &r,
					    .rcpt_count = 1,
					    .body_len = b.n,
					    .body_read = body_read,
					    .body_user = &b};
		const struct smtp_client_msg *ms[] = {&m};
		const struct step s[] = {
			{GREET, EHLO},
			{EHLO_PIPE, "MAIL FROM:<>\r\n" RCPTA "DATA\r\n"},
			{"250 ok\r\n250 ok\r\n354 go\r\n", cases[i].wire},
			{OK, ""},
			{NULL, NULL},
		};
		run_script("dot_stuffing", &conf, ms, 1, false, s, "R;M D250/2.0.0;", NULL);
	}
}

static char g_big[1200];
static struct body g_bb = {g_big, sizeof(g_big), -1};
static const struct smtp_client_msg g_mbig = {
	.sender = "dev@fleet.test",
	.rcpts = g_r2,
	.rcpt_count = 1,
	.body_len = sizeof(g_big),
	.body_read = body_read,
	.body_user = &g_bb,
};

static void fill_big(void)
{
	for (size_t i = 0; i < sizeof(g_big); i++)
		g_big[i] = (i % 40 == 38)   ? '\r'
			   : (i % 40 == 39) ? '\n'
			   : (i % 40 == 0)  ? '.'
					    : 'a' + (char)(i % 26);
}

static void test_bdat_pipelined(void)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_stats st;
	static char flight[4096];
	const struct smtp_client_msg *ms[] = {&g_mbig};

	fill_big();
	conf.bdat_chunk = 512;
	snprintf(flight, sizeof(flight),
		 MAIL1 RCPTA "BDAT 512\r\n%.512sBDAT 512\r\n%.512sBDAT 176 LAST\r\n%.176s", g_big,
		 g_big + 512, g_big + 1024);
	const struct step s[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n", flight},
		{"250 ok\r\n250 ok\r\n250 2.0.0 512\r\n250 2.0.0 1024\r\n", ""},
		{"250 2.0.0 queued\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_script("bdat_pipelined", &conf, ms, 1, true, s, "R;M D250/2.0.0;C;", &st);
	CU_ASSERT_EQUAL(st.bdat_messages, 1);
	CU_ASSERT_EQUAL(st.bdat_chunks, 3);
	CU_ASSERT_EQUAL(st.data_messages, 0);
}

static void test_bdat_lockstep(void)
{
	struct smtp_client_conf conf = cconf();
	static char c1[600], c2[600], c3[600];
	const struct smtp_client_msg *ms[] = {&g_mbig};

	fill_big();
	conf.bdat_chunk = 512;
	snprintf(c1, sizeof(c1), "BDAT 512\r\n%.512s", g_big);
	snprintf(c2, sizeof(c2), "BDAT 512\r\n%.512s", g_big + 512);
	snprintf(c3, sizeof(c3), "BDAT 176 LAST\r\n%.176s", g_big + 1024);
	const struct step s[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250 CHUNKING\r\n", MAIL1},
		{"250 ok\r\n", RCPTA},
		{"250 ok\r\n", c1},
		{"250 ok\r\n", c2},
		{"250 ok\r\n", c3},
		{"250 2.0.0 queued\r\n", ""},
		{NULL, NULL},
	};
	run_script("bdat_lockstep", &conf, ms, 1, false, s, "R;M D250/2.0.0;", NULL);
	/* a failed chunk: no more chunks, RSET */
	const struct step f[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250 CHUNKING\r\n", MAIL1},
		{"250 ok\r\n", RCPTA},
		{"250 ok\r\n", c1},
		{"452 4.3.1 full\r\n", "RSET\r\n"},
		{"250 ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("bdat_fail", &conf, ms, 1, false, f, "R;M T452/4.3.1;", NULL);
}

static void test_greeting_errors(void)
{
	struct smtp_client_conf conf = cconf();
	const struct step s554[] = {{"554 5.7.1 go away\r\n", ""}, {NULL, NULL}};
	const struct step s421[] = {{"421 4.3.2 busy\r\n", ""}, {NULL, NULL}};
	const struct step bad[] = {{"hello\r\n", ""}, {NULL, NULL}};

	/* the queued message is deferred, never bounced, for a session failure */
	run_script("greet554", &conf, g_one, 1, false, s554, "M T421/4.4.2 T421/4.4.2;F554/5.7.1;",
		   NULL);
	run_script("greet421", &conf, g_one, 1, false, s421, "M T421/4.3.2 T421/4.3.2;F421/4.3.2;",
		   NULL);
	run_script("greet_bad", &conf, g_one, 1, false, bad, "M T421/4.4.2 T421/4.4.2;F421/4.4.2;",
		   NULL);
}

static void test_helo_fallback(void)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_stats st;
	const struct step s[] = {
		{GREET, EHLO},
		{"502 5.5.2 what\r\n", "HELO client.test\r\n"},
		{"250 mx.test\r\n", MAIL1},
		{"250 ok\r\n", RCPTA},
		{"250 ok\r\n", RCPTB},
		{"250 ok\r\n", "DATA\r\n"},
		{"354 go\r\n", BODY1_STUFFED},
		{"250 ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("helo_fallback", &conf, g_one, 1, false, s, "R;M D250/ D250/;", &st);
	CU_ASSERT_EQUAL(st.helo_fallbacks, 1);
	const struct step h[] = {
		{GREET, EHLO},
		{"500 no\r\n", "HELO client.test\r\n"},
		{"501 5.5.4 no\r\n", ""},
		{NULL, NULL},
	};
	run_script("helo_refused", &conf, g_one, 1, false, h, "M T421/4.4.2 T421/4.4.2;F501/5.5.4;",
		   NULL);
	const struct step e4[] = {{GREET, EHLO}, {"451 4.3.0 later\r\n", ""}, {NULL, NULL}};
	run_script("ehlo_451", &conf, g_one, 1, false, e4, "M T451/4.3.0 T451/4.3.0;F451/4.3.0;",
		   NULL);
}

static void test_starttls(void)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_stats st;

	conf.tls = SMTP_CLIENT_TLS_OPPORTUNISTIC;
	const struct step s[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n", "STARTTLS\r\n"},
		{"220 2.0.0 go\r\n", ""},
		{TLS_STEP, EHLO},
		/* after TLS the capabilities are new: no PIPELINING now */
		{"250-mx.test\r\n250 8BITMIME\r\n", MAIL1},
		{"250 ok\r\n", RCPTA},
		{"250 ok\r\n", RCPTB},
		{"250 ok\r\n", "DATA\r\n"},
		{"354 go\r\n", BODY1_STUFFED},
		{"250 2.0.0 ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("starttls", &conf, g_one, 1, false, s, "T;R;M D250/2.0.0 D250/2.0.0;", &st);
	CU_ASSERT_EQUAL(st.starttls, 1);
	/* refused, opportunistic: carry on in plaintext */
	const struct step r[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n", "STARTTLS\r\n"},
		{"454 4.7.0 TLS not available\r\n", MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", BODY1_STUFFED},
		{"250 ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("starttls_refused", &conf, g_one, 1, false, r, "R;M D250/ D250/;", NULL);
	/* required: refused or not offered fails the session */
	conf.tls = SMTP_CLIENT_TLS_REQUIRED;
	const struct step rq[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n", "STARTTLS\r\n"},
		{"454 4.7.0 TLS not available\r\n", ""},
		{NULL, NULL},
	};
	run_script("starttls_required_refused", &conf, g_one, 1, false, rq,
		   "M T454/4.7.0 T454/4.7.0;F454/4.7.0;", NULL);
	const struct step no[] = {{GREET, EHLO}, {EHLO_PIPE, ""}, {NULL, NULL}};
	run_script("starttls_required_missing", &conf, g_one, 1, false, no,
		   "M T454/4.7.4 T454/4.7.4;F454/4.7.4;", NULL);
	/* CVE-2011-0411 the other way round: plaintext after the 220 */
	conf.tls = SMTP_CLIENT_TLS_OPPORTUNISTIC;
	const struct step inj[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250 STARTTLS\r\n", "STARTTLS\r\n"},
		{"220 go\r\n250 injected\r\n", ""},
		{NULL, NULL},
	};
	run_script("starttls_injection", &conf, g_one, 1, false, inj,
		   "T;M T421/4.4.2 T421/4.4.2;F421/4.4.2;", &st);
	CU_ASSERT_EQUAL(st.protocol_errors, 1);
}

static void test_auth(void)
{
	struct smtp_client_conf conf = cconf();

	conf.tls = SMTP_CLIENT_TLS_REQUIRED;
	conf.auth_user = "dev1";
	conf.auth_pass = "secret";
	/* base64("\0dev1\0secret") */
	const struct step s[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250 STARTTLS\r\n", "STARTTLS\r\n"},
		{"220 go\r\n", ""},
		{TLS_STEP, EHLO},
		{"250-mx.test\r\n250-AUTH LOGIN PLAIN\r\n250 PIPELINING\r\n",
		 "AUTH PLAIN AGRldjEAc2VjcmV0\r\n"},
		{"235 2.7.0 ok\r\n", MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", BODY1_STUFFED},
		{"250 ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("auth_plain", &conf, g_one, 1, false, s, "T;R;M D250/ D250/;", NULL);
	const struct step l[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250 STARTTLS\r\n", "STARTTLS\r\n"},
		{"220 go\r\n", ""},
		{TLS_STEP, EHLO},
		{"250-mx.test\r\n250 AUTH=LOGIN\r\n", "AUTH LOGIN\r\n"},
		{"334 VXNlcm5hbWU6\r\n", "ZGV2MQ==\r\n"},
		{"334 UGFzc3dvcmQ6\r\n", "c2VjcmV0\r\n"},
		{"535 5.7.8 bad\r\n", ""},
		{NULL, NULL},
	};
	run_script("auth_login_fail", &conf, g_one, 1, false, l,
		   "T;M T421/4.4.2 T421/4.4.2;F535/5.7.8;", NULL);
	/* never a password in the clear unless allowed */
	conf.tls = SMTP_CLIENT_TLS_NONE;
	const struct step pt[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250 AUTH PLAIN\r\n", ""},
		{NULL, NULL},
	};
	run_script("auth_plaintext", &conf, g_one, 1, false, pt,
		   "M T454/4.7.0 T454/4.7.0;F454/4.7.0;", NULL);
	conf.auth_plaintext_ok = true;
	const struct step nm[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250 AUTH CRAM-MD5\r\n", ""},
		{NULL, NULL},
	};
	run_script("auth_no_mechanism", &conf, g_one, 1, false, nm,
		   "M T454/4.7.0 T454/4.7.0;F454/4.7.0;", NULL);
	const struct step pf[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250 AUTH PLAIN\r\n", "AUTH PLAIN AGRldjEAc2VjcmV0\r\n"},
		{"535 5.7.8 no\r\n", ""},
		{NULL, NULL},
	};
	run_script("auth_plain_fail", &conf, g_one, 1, false, pf,
		   "M T421/4.4.2 T421/4.4.2;F535/5.7.8;", NULL);
}

static void test_mail_refused(void)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_stats st;
	const struct step s[] = {
		{GREET, EHLO},
		{EHLO_BASIC, MAIL1},
		{"451 4.3.0 try later\r\n", "RSET\r\n"},
		{"250 ok\r\n", MAIL1},
		{"553 5.1.7 bad sender\r\n", "RSET\r\n"},
		{"250 ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("mail_refused", &conf, g_two, 2, false, s,
		   "R;M T451/4.3.0 T451/4.3.0;M B553/5.1.7 B553/5.1.7;", &st);
	CU_ASSERT_EQUAL(st.rsets, 2);
	/* pipelined: the RCPT replies after a failed MAIL do not decide anything */
	const struct step p[] = {
		{GREET, EHLO},
		{EHLO_PIPE, MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"452 4.3.1 full\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need "
		 "MAIL\r\n",
		 "RSET\r\n"},
		{"250 ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("mail_refused_pipelined", &conf, g_one, 1, false, p,
		   "R;M T452/4.3.1 T452/4.3.1;", NULL);
}

static void test_rcpts_refused(void)
{
	struct smtp_client_conf conf = cconf();
	const struct step s[] = {
		{GREET, EHLO},
		{EHLO_BASIC, MAIL1},
		{"250 ok\r\n", RCPTA},
		{"550 5.1.1 unknown\r\n", RCPTB},
		{"450 4.2.1 busy\r\n", "RSET\r\n"},
		{"250 ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("rcpts_refused", &conf, g_one, 1, false, s, "R;M B550/5.1.1 T450/4.2.1;", NULL);
	const struct step p[] = {
		{GREET, EHLO},
		{EHLO_PIPE, MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 ok\r\n550 5.1.1 unknown\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid "
		 "recipients\r\n",
		 "RSET\r\n"},
		{"250 ok\r\n", MAIL1 RCPTA RCPTB "DATA\r\n"},
		/* a server that says 354 anyway gets an empty message */
		{"250 ok\r\n550 5.1.1 unknown\r\n550 5.1.1 unknown\r\n354 go\r\n", ".\r\n"},
		{"250 ok\r\n", "RSET\r\n"},
		{"250 ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("rcpts_refused_pipelined", &conf, g_two, 2, false, p,
		   "R;M B550/5.1.1 B550/5.1.1;M B550/5.1.1 B550/5.1.1;", NULL);
}

static void test_data_errors(void)
{
	struct smtp_client_conf conf = cconf();
	const struct step s[] = {
		{GREET, EHLO},
		{EHLO_PIPE, MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 ok\r\n250 ok\r\n250 ok\r\n451 4.3.0 no DATA now\r\n", "RSET\r\n"},
		{"250 ok\r\n", MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", BODY1_STUFFED},
		/* a refusal at the end of data ends the transaction: no RSET */
		{"554 5.7.1 spam\r\n", "QUIT\r\n"},
		{"500 what\r\n", ""},
		{NULL, NULL},
	};
	run_script("data_errors", &conf, g_two, 2, true, s,
		   "R;M T451/4.3.0 T451/4.3.0;M B554/5.7.1 B554/5.7.1;C;", NULL);
}

static void test_two_messages(void)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_stats st;
	const struct step s[] = {
		{GREET, EHLO},
		{EHLO_PIPE, MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", BODY1_STUFFED},
		{"250 2.0.0 one\r\n", MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", BODY1_STUFFED},
		{"250 2.0.0 two\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_script("two_messages", &conf, g_two, 2, true, s,
		   "R;M D250/2.0.0 D250/2.0.0;M D250/2.0.0 D250/2.0.0;C;", &st);
	CU_ASSERT_EQUAL(st.messages_sent, 2);
	CU_ASSERT_EQUAL(st.pipelined_flights, 2);
	CU_ASSERT_EQUAL(st.rsets, 0);
	CU_ASSERT_EQUAL(st.sessions, 1);
}

/*
 * smtp_client_reuse: a session cut mid-transaction reports its message
 * deferred; the same client then runs a new session exactly as a new
 * client would (no capability, queued reply or output of the old one left:
 * the first server offered PIPELINING, the second does not).
 */
static void test_reuse(void)
{
	struct smtp_client_conf conf = cconf();
	struct ct *t = calloc(1, sizeof(*t));

	CU_ASSERT_FATAL(t != NULL);
	t->msgs = g_one;
	t->nmsgs = 1;
	t->quit = true;
	CU_ASSERT_EQUAL_FATAL(smtp_client_new(&conf, &ccb, t, &t->st, &t->c), 0);
	submit_next(t);
	smtp_client_start(t->c, false);
	feed(t, GREET, 0);
	feed(t, EHLO_PIPE, 0);
	feed(t, "250 ok\r\n", 0); /* MAIL's reply; the RCPTs' and DATA's never come */
	CU_ASSERT_STRING_EQUAL(t->out, EHLO MAIL1 RCPTA RCPTB "DATA\r\n");
	CU_ASSERT_EQUAL(smtp_client_reuse(t->c, t), 0);
	CU_ASSERT_STRING_EQUAL(t->ev, "R;M T421/4.4.2 T421/4.4.2;F421/4.4.2;");
	CU_ASSERT_EQUAL(t->st.messages_deferred, 1);

	t->out_len = t->out_seen = t->ev_len = 0;
	t->out[0] = t->ev[0] = '\0';
	t->next_msg = t->ndone = 0;
	submit_next(t);
	smtp_client_start(t->c, false);
	const char *srv[] = {GREET, EHLO_BASIC, "250 2.1.0 Ok\r\n", "250 2.1.5 Ok\r\n",
			     "250 2.1.5 Ok\r\n", "354 go ahead\r\n", "250 2.0.0 Ok\r\n",
			     "221 2.0.0 Bye\r\n"};
	for (size_t i = 0; i < sizeof(srv) / sizeof(srv[0]); i++)
		feed(t, srv[i], 1);
	CU_ASSERT_STRING_EQUAL(t->out, EHLO MAIL1 RCPTA RCPTB "DATA\r\n" BODY1_STUFFED "QUIT\r\n");
	CU_ASSERT_STRING_EQUAL(t->ev, "R;M D250/2.0.0 D250/2.0.0;C;");
	CU_ASSERT_EQUAL(t->st.sessions, 2);
	CU_ASSERT_EQUAL(t->st.messages_sent, 1);
	CU_ASSERT_EQUAL(t->st.pipelined_flights, 1); /* the first session's only */
	CU_ASSERT_TRUE(smtp_client_is_dead(t->c));
	smtp_client_free(t->c);
	free(t);
}

static void test_capability_refusals(void)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_stats st;
	struct smtp_client_msg big = g_m1, eight = g_m1, utf = g_m1, bads = g_m1, badr = g_m1;
	struct smtp_client_rcpt inj[] = {{"a@x.test>\r\nRSET", 0, NULL}, {"b@x.test", 0, NULL}};
	const struct smtp_client_msg *ms[] = {&big, &eight, &utf, &bads, &badr};

	big.body_len = 10001;
	eight.body_8bit = true;
	utf.smtputf8 = true;
	bads.sender = "dev@fleet.test> SIZE=1";
	badr.rcpts = inj;
	const struct step s[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250-SIZE 10000\r\n250 PIPELINING\r\n",
		 "MAIL FROM:<dev@fleet.test> SIZE=37\r\n" RCPTB "DATA\r\n"},
		{"250 ok\r\n250 ok\r\n354 go\r\n", BODY1_STUFFED},
		{"250 ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("capability_refusals", &conf, ms, 5, false, s,
		   "R;M B552/5.3.4 B552/5.3.4;M B554/5.6.3 B554/5.6.3;M B553/5.6.7 B553/5.6.7;"
		   "M B553/5.1.7 B553/5.1.7;"
		   "M B553/5.1.3 D250/;",
		   &st);
	CU_ASSERT_EQUAL(st.refused_local, 4);
	CU_ASSERT_EQUAL(st.messages_bounced, 5);
	/* SMTPUTF8 to a server that has it; a UTF-8 address needs the flag */
	struct smtp_client_rcpt ur[] = {{"J\xc3\xb6rg@x.test", 0, NULL}};
	struct smtp_client_msg u8 = g_m1, no8 = g_m1;
	const struct smtp_client_msg *us[] = {&no8, &u8};
	u8.smtputf8 = true;
	u8.rcpts = ur;
	u8.rcpt_count = 1;
	no8.rcpts = ur;
	no8.rcpt_count = 1;
	const struct step u[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250 SMTPUTF8\r\n", "MAIL FROM:<dev@fleet.test> SMTPUTF8\r\n"},
		{"250 ok\r\n", "RCPT TO:<J\xc3\xb6rg@x.test>\r\n"},
		{NULL, NULL},
	};
	run_script("smtputf8", &conf, us, 2, false, u, "R;M B553/5.1.3;", NULL);
}

static void test_dsn_params(void)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_rcpt r[] = {
		{"a@x.test", SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE, "rfc822;a+40x.test"},
		{"b@x.test", SMTP_NOTIFY_NEVER, "bad orcpt"}};
	struct smtp_client_msg m = g_m1;
	const struct smtp_client_msg *ms[] = {&m, &m};

	m.rcpts = r;
	m.ret = SMTP_RET_HDRS;
	m.envid = "ID+2B1";
	m.body_8bit = true;
	const struct step s[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250-DSN\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
		 "MAIL FROM:<dev@fleet.test> BODY=8BITMIME RET=HDRS ENVID=ID+2B1\r\n"},
		{"250 ok\r\n",
		 "RCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40x.test\r\n"},
		{"250 ok\r\n", "RCPT TO:<b@x.test> NOTIFY=NEVER\r\n"},
		{"250 ok\r\n", "DATA\r\n"},
		{"354 go\r\n", BODY1_STUFFED},
		{"250 ok\r\n",
		 "MAIL FROM:<dev@fleet.test> BODY=8BITMIME RET=HDRS ENVID=ID+2B1\r\n"},
		{NULL, NULL},
	};
	run_script("dsn_params", &conf, ms, 2, false, s, "R;M D250/ D250/;", NULL);
	/* without DSN from the server, no DSN parameters */
	const struct step n[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250 8BITMIME\r\n", "MAIL FROM:<dev@fleet.test> BODY=8BITMIME\r\n"},
		{"250 ok\r\n", RCPTA},
		{NULL, NULL},
	};
	run_script("no_dsn", &conf, ms, 1, false, n, "R;", NULL);
}

static void test_421_and_malformed(void)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_stats st;
	const struct step s[] = {
		{GREET, EHLO},
		{EHLO_BASIC, MAIL1},
		{"250 ok\r\n", RCPTA},
		{"550 5.1.1 unknown\r\n", RCPTB},
		{"421 4.4.2 shutting down\r\n", ""},
		{NULL, NULL},
	};
	/* the refused recipient keeps its bounce, the other is deferred with the 421 */
	run_script("421_mid", &conf, g_one, 1, false, s, "R;M B550/5.1.1 T421/4.4.2;F421/4.4.2;",
		   NULL);
	const struct step m[] = {
		{GREET, EHLO},
		{EHLO_PIPE, MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 ok\r\n250 ok\r\n25O ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("malformed", &conf, g_one, 1, false, m, "R;M T421/4.4.2 T421/4.4.2;F421/4.4.2;",
		   &st);
	CU_ASSERT_EQUAL(st.protocol_errors, 1);
	CU_ASSERT_EQUAL(st.sessions_failed, 1);
	/* a reply that does not fit the command */
	const struct step w[] = {
		{GREET, EHLO},
		{EHLO_BASIC, MAIL1},
		{"354 what\r\n", ""},
		{NULL, NULL},
	};
	run_script("354_to_mail", &conf, g_one, 1, false, w,
		   "R;M T421/4.4.2 T421/4.4.2;F421/4.4.2;", NULL);
	const struct step d[] = {
		{GREET, EHLO},
		{EHLO_PIPE, MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n", ""},
		{NULL, NULL},
	};
	run_script("250_to_data", &conf, g_one, 1, false, d,
		   "R;M T421/4.4.2 T421/4.4.2;F421/4.4.2;", NULL);
	/* unsolicited reply while idle */
	const struct step u[] = {
		{GREET, EHLO},
		{EHLO_BASIC, ""},
		{"250 surprise\r\n", ""},
		{NULL, NULL},
	};
	run_script("unsolicited", &conf, NULL, 0, false, u, "R;F421/4.4.2;", NULL);
	/* a body that cannot be read mid-DATA drops the connection, message deferred */
	struct body bad = {BODY1, sizeof(BODY1) - 1, 0};
	struct smtp_client_msg mb = g_m1;
	const struct smtp_client_msg *ms[] = {&mb};
	mb.body_user = &bad;
	const struct step b[] = {
		{GREET, EHLO},	       {EHLO_BASIC, MAIL1},	   {"250 ok\r\n", RCPTA},
		{"250 ok\r\n", RCPTB}, {"250 ok\r\n", "DATA\r\n"}, {"354 go\r\n", ""},
		{NULL, NULL},
	};
	run_script("body_error", &conf, ms, 1, false, b, "R;M T451/4.3.0 T451/4.3.0;F451/4.3.0;",
		   NULL);
}

static void test_timeouts(void)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_stats st;
	struct ct *t = calloc(1, sizeof(*t));
	struct smtp_client *c;

	memset(&st, 0, sizeof(st));
	g_now = 1000000;
	CU_ASSERT_EQUAL_FATAL(smtp_client_new(&conf, &ccb, t, &st, &c), 0);
	t->c = c;
	CU_ASSERT_EQUAL(smtp_client_deadline(c), UINT64_MAX);
	smtp_client_start(c, false);
	CU_ASSERT_EQUAL(smtp_client_deadline(c), g_now + conf.timeout_greeting_us);
	g_now += 1000;
	smtp_client_input(c, (const uint8_t *)GREET, strlen(GREET));
	CU_ASSERT_EQUAL(smtp_client_deadline(c), g_now + conf.timeout_helo_us);
	smtp_client_input(c, (const uint8_t *)EHLO_BASIC, strlen(EHLO_BASIC));
	CU_ASSERT_EQUAL(smtp_client_deadline(c), UINT64_MAX); /* idle: the pool's business */
	CU_ASSERT_TRUE(smtp_client_is_ready(c));
	CU_ASSERT_EQUAL(smtp_client_send_message(c, &g_m1), 0);
	CU_ASSERT_EQUAL(smtp_client_send_message(c, &g_m1), -EBUSY);
	CU_ASSERT_EQUAL(smtp_client_deadline(c), g_now + conf.timeout_mail_us);
	g_now += 5;
	smtp_client_input(c, (const uint8_t *)"250 ok\r\n", 8);
	CU_ASSERT_EQUAL(smtp_client_deadline(c), g_now + conf.timeout_rcpt_us);
	smtp_client_input(c, (const uint8_t *)"250 ok\r\n250 ok\r\n", 16);
	CU_ASSERT_EQUAL(smtp_client_deadline(c), g_now + conf.timeout_data_init_us);
	smtp_client_input(c, (const uint8_t *)"354 go\r\n", 8);
	CU_ASSERT_EQUAL(smtp_client_deadline(c), g_now + conf.timeout_data_done_us);
	g_now += conf.timeout_data_done_us;
	smtp_client_timeout(c);
	CU_ASSERT_STRING_EQUAL(t->ev, "R;M T421/4.4.2 T421/4.4.2;F421/4.4.2;");
	CU_ASSERT_EQUAL(st.timeouts, 1);
	CU_ASSERT_TRUE(smtp_client_is_dead(c));
	CU_ASSERT_EQUAL(smtp_client_deadline(c), UINT64_MAX);
	CU_ASSERT_EQUAL(smtp_client_input(c, (const uint8_t *)"250 ok\r\n", 8), -EPIPE);
	CU_ASSERT_EQUAL(smtp_client_send_message(c, &g_m1), -EPIPE);
	smtp_client_free(c);
	free(t);

	/* a timeout in QUIT just closes */
	const struct step q[] = {
		{GREET, EHLO},	    {EHLO_BASIC, ""}, {QUIT_STEP, "QUIT\r\n"},
		{TIMEOUT_STEP, ""}, {NULL, NULL},
	};
	run_script("quit_timeout", &conf, NULL, 0, false, q, "R;C;", NULL);
	/* the stall in the greeting */
	const struct step g[] = {{TIMEOUT_STEP, ""}, {NULL, NULL}};
	run_script("greeting_timeout", &conf, g_one, 1, false, g,
		   "M T421/4.4.2 T421/4.4.2;F421/4.4.2;", NULL);
}

/* A body much larger than the client's buffers, through a slow and a stalled transport. */
static void test_large_body(void)
{
	struct smtp_client_conf conf = cconf();
	struct ct *t = calloc(1, sizeof(*t));
	size_t n = 300 * 1024, o = 0;
	char *body = malloc(n), *want = malloc(2 * n + 16);
	struct body b = {body, n, -1};
	struct smtp_client_rcpt r = {"a@x.test", 0, NULL};
	struct smtp_client_msg m = {.sender = "dev@fleet.test",
				    .rcpts = &r,
				    .rcpt_count = 1,
				    .body_len = n,
				    .body_read = body_read,
				    .body_user = &b};
	for (size_t i = 0; i < n; i++) {
		size_t col = i % 80, line = i / 80;
		body[i] = col == 78			? '\r'
			  : col == 79			? '\n'
			  : (col == 0 && line % 5 == 0) ? '.'
							: 'x';
	}
	/* the expected wire form, computed the simple way */
	for (size_t i = 0; i < n; i++) {
		if (body[i] == '.' && (i == 0 || body[i - 1] == '\n'))
			want[o++] = '.';
		want[o++] = body[i];
	}
	memcpy(want + o, ".\r\n", 4);
	o += 3;
	g_now = 1000000;
	t->send_limit = 1000;
	CU_ASSERT_EQUAL_FATAL(smtp_client_new(&conf, &ccb, t, &t->st, &t->c), 0);
	CU_ASSERT_EQUAL(smtp_client_send_message(t->c, &m), 0);
	smtp_client_start(t->c, false);
	feed(t, GREET, 0);
	feed(t, "250-mx.test\r\n250 PIPELINING\r\n", 0);
	CU_ASSERT_STRING_EQUAL(t->out, EHLO MAIL1 RCPTA "DATA\r\n");
	t->out_seen = t->out_len;
	t->blocked = true;
	drain(t);
	/* the stall: nothing moves, the deadline is the data transfer timeout */
	smtp_client_input(t->c, (const uint8_t *)"250 ok\r\n250 ok\r\n354 go\r\n", 24);
	CU_ASSERT_EQUAL(t->out_len, t->out_seen);
	g_now += 7;
	CU_ASSERT_EQUAL(smtp_client_deadline(t->c), 1000000 + conf.timeout_data_xfer_us);
	t->blocked = false;
	drain(t);
	CU_ASSERT_EQUAL(t->out_len - t->out_seen, o);
	CU_ASSERT_TRUE(memcmp(t->out + t->out_seen, want, o) == 0);
	CU_ASSERT_EQUAL(smtp_client_deadline(t->c), g_now + conf.timeout_data_done_us);
	CU_ASSERT_TRUE(t->st.send_blocked > 0);
	feed(t, "250 2.0.0 ok\r\n", 0);
	CU_ASSERT_STRING_EQUAL(t->ev, "R;M D250/2.0.0;");
	CU_ASSERT_EQUAL(t->st.body_bytes, n);
	smtp_client_free(t->c);
	free(body);
	free(want);
	free(t);
}

static void test_conf_and_api(void)
{
	struct smtp_client_conf conf = cconf();
	struct smtp_client_stats st;
	struct smtp_client *c;
	char err[128];

	CU_ASSERT_EQUAL(smtp_client_conf_check(&conf, err, sizeof(err)), 0);
	conf.helo_name = "bad name";
	CU_ASSERT_EQUAL(smtp_client_conf_check(&conf, err, sizeof(err)), -EINVAL);
	conf = cconf();
	conf.bdat_chunk = 10;
	CU_ASSERT_EQUAL(smtp_client_new(&conf, &ccb, NULL, &st, &c), -EINVAL);
	conf = cconf();
	conf.auth_user = "x";
	CU_ASSERT_EQUAL(smtp_client_conf_check(&conf, err, sizeof(err)), -EINVAL);
	conf = cconf();
	CU_ASSERT_EQUAL_FATAL(smtp_client_new(&conf, &ccb, NULL, &st, &c), 0);
	struct smtp_client_msg m = g_m1;
	m.rcpt_count = 0;
	CU_ASSERT_EQUAL(smtp_client_send_message(c, &m), -EINVAL);
	m = g_m1;
	m.body_read = NULL;
	CU_ASSERT_EQUAL(smtp_client_send_message(c, &m), -EINVAL);
	smtp_client_free(c);
}

/* ---- round trip against lib/smtp's own server session ---- */

struct rt {
	uint8_t c2s[1 << 16], s2c[1 << 16];
	size_t c2s_len, s2c_len;
	char msg[1 << 16];
	size_t msg_len;
	bool commit_pending, closed;
	struct smtp_session *s;
	struct smtp_client *c;
	char ev[512];
	size_t ev_len;
	unsigned delivered;
};

static size_t rt_csend(void *user, const uint8_t *p, size_t n)
{
	struct rt *r = user;
	if (n > sizeof(r->c2s) - r->c2s_len)
		n = sizeof(r->c2s) - r->c2s_len;
	memcpy(r->c2s + r->c2s_len, p, n);
	r->c2s_len += n;
	return n;
}

static void rt_ssend(void *user, const uint8_t *p, size_t n)
{
	struct rt *r = user;
	CU_ASSERT_TRUE_FATAL(r->s2c_len + n <= sizeof(r->s2c));
	memcpy(r->s2c + r->s2c_len, p, n);
	r->s2c_len += n;
}

static void rt_sdata(void *user, const uint8_t *p, size_t n)
{
	struct rt *r = user;
	CU_ASSERT_TRUE_FATAL(r->msg_len + n <= sizeof(r->msg));
	memcpy(r->msg + r->msg_len, p, n);
	r->msg_len += n;
}

static void rt_sbegin(void *user)
{
	((struct rt *)user)->msg_len = 0;
}

static void rt_send(void *user, const struct smtp_envelope *env)
{
	struct rt *r = user;
	CU_ASSERT_EQUAL(env->rcpt_count, 2);
	r->commit_pending = true;
}

static void rt_sclose(void *user)
{
	((struct rt *)user)->closed = true;
}

static void rt_done(void *user, const struct smtp_client_result *res)
{
	struct rt *r = user;
	r->delivered += res->delivered;
	CU_ASSERT_EQUAL(res->rcpt_count, 2);
	smtp_client_quit(r->c);
}

static void rt_cclosed(void *user)
{
	struct rt *r = user;
	r->ev_len += (size_t)snprintf(r->ev + r->ev_len, sizeof(r->ev) - r->ev_len, "closed;");
}

static void rt_failed(void *user, const struct smtp_reply *why)
{
	struct rt *r = user;
	r->ev_len += (size_t)snprintf(r->ev + r->ev_len, sizeof(r->ev) - r->ev_len, "failed %u %s;",
				      why->code, why->text);
}

static const char *const rt_locals[] = {"example.com"};
static const struct smtp_server_cb rt_scb = {.send = rt_ssend,
					     .close = rt_sclose,
					     .message_begin = rt_sbegin,
					     .message_data = rt_sdata,
					     .message_end = rt_send};

/* A fresh pair talking through r: lib/smtp's server for example.com, and the client. */
static void rt_open(struct rt *r, struct smtp_server_conf *sc, struct smtp_server_stats *sst,
		    const struct smtp_client_conf *cc, const struct smtp_client_cb *ccb,
		    struct smtp_client_stats *cst, uint64_t session_id)
{
	memset(r, 0, sizeof(*r));
	memset(sst, 0, sizeof(*sst));
	memset(cst, 0, sizeof(*cst));
	smtp_server_conf_defaults(sc);
	sc->hostname = "mx.example.com";
	sc->local_domains = rt_locals;
	sc->local_domain_count = 1;
	sc->now_us = clock_us;
	CU_ASSERT_EQUAL_FATAL(smtp_session_new(sc, &rt_scb, r, sst, 0x0a4d0005u, session_id, &r->s),
			      0);
	CU_ASSERT_EQUAL_FATAL(smtp_client_new(cc, ccb, r, cst, &r->c), 0);
}

/* The server's replies to the client in one piece, its CHUNKING line hidden (DATA path). */
static void rt_to_client_no_chunking(struct rt *r)
{
	static uint8_t tmp[sizeof(r->s2c)];
	char *ch = memmem(r->s2c, r->s2c_len, "250-CHUNKING", 12);
	size_t n = r->s2c_len;

	if (ch)
		ch[4] = 'X'; /* "250-XHUNKING" */
	memcpy(tmp, r->s2c, n);
	r->s2c_len = 0;
	smtp_client_input(r->c, tmp, n);
}

/* lib/smtp's server offers PIPELINING and CHUNKING: MAIL, RCPTs and BDAT in one flight. */
static void test_round_trip_bdat(void)
{
	static struct rt r;
	struct smtp_server_conf sc;
	struct smtp_server_stats sst;
	struct smtp_client_conf cc = cconf();
	struct smtp_client_stats cst;
	static const char body[] = "From: a@fleet.test\r\nSubject: dots\r\n\r\n.leading dot\r\n"
				   "..two\r\n.\r\nmiddle\r\n. \r\nend without crlf";
	static const char want[] = "From: a@fleet.test\r\nSubject: dots\r\n\r\n.leading dot\r\n"
				   "..two\r\n.\r\nmiddle\r\n. \r\nend without crlf\r\n";
	struct body b = {body, sizeof(body) - 1, -1};
	struct smtp_client_rcpt rc[] = {{"a@example.com", 0, NULL}, {"b@example.com", 0, NULL}};
	struct smtp_client_msg m = {.sender = "dev@fleet.test",
				    .rcpts = rc,
				    .rcpt_count = 2,
				    .body_len = b.n,
				    .body_read = body_read,
				    .body_user = &b};
	const struct smtp_client_cb ccb2 = {.send = rt_csend,
					    .message_done = rt_done,
					    .failed = rt_failed,
					    .closed = rt_cclosed};

	rt_open(&r, &sc, &sst, &cc, &ccb2, &cst, 7);
	CU_ASSERT_EQUAL(smtp_client_send_message(r.c, &m), 0);
	smtp_client_start(r.c, false);
	smtp_session_start(r.s);
	for (int i = 0; i < 1000 && !smtp_client_is_dead(r.c); i++) {
		if (r.commit_pending) {
			r.commit_pending = false;
			smtp_session_message_done(r.s, 0, "Q42");
		}
		if (r.s2c_len) {
			/* the server's replies reach the client in 5-byte segments */
			size_t n = r.s2c_len < 5 ? r.s2c_len : 5;
			uint8_t tmp[5];
			memcpy(tmp, r.s2c, n);
			memmove(r.s2c, r.s2c + n, r.s2c_len - n);
			r.s2c_len -= n;
			smtp_client_input(r.c, tmp, n);
		} else if (r.c2s_len) {
			static uint8_t tmp[sizeof(r.c2s)];
			size_t n = r.c2s_len;
			memcpy(tmp, r.c2s, n);
			r.c2s_len = 0;
			size_t k = smtp_session_input(r.s, tmp, n);
			CU_ASSERT_EQUAL(k, n);
		} else if (!r.commit_pending) {
			break;
		}
	}
	CU_ASSERT_STRING_EQUAL(r.ev, "closed;");
	CU_ASSERT_EQUAL(r.delivered, 2);
	CU_ASSERT_TRUE(r.closed);
	/* what arrived is our Received: line and then the body, byte-exact */
	const char *hdr_end = strstr(r.msg, "\r\nFrom: a@fleet.test");
	CU_ASSERT_PTR_NOT_NULL_FATAL(hdr_end);
	CU_ASSERT_TRUE(strncmp(r.msg, "Received: ", 10) == 0);
	CU_ASSERT_STRING_EQUAL(hdr_end + 2, want);
	CU_ASSERT_EQUAL(sst.messages_accepted, 1);
	CU_ASSERT_EQUAL(cst.rcpts_delivered, 2);
	CU_ASSERT_EQUAL(cst.pipelined_flights, 1);
	CU_ASSERT_EQUAL(cst.bdat_messages, 1);
	smtp_client_free(r.c);
	smtp_session_free(r.s);
}

/* The same through DATA: dot-stuffing by the client, unstuffing by the server. */
static void test_round_trip_data(void)
{
	/* DATA and dot-stuffing: the server's CHUNKING line is hidden from the client */
	static struct rt r;
	struct smtp_server_conf sc;
	struct smtp_server_stats sst;
	struct smtp_client_conf cc = cconf();
	struct smtp_client_stats cst;
	static const char body[] = ".a\r\n..b\r\n.\r\nc";
	struct body b = {body, sizeof(body) - 1, -1};
	struct smtp_client_rcpt rc[] = {{"a@example.com", 0, NULL}, {"b@example.com", 0, NULL}};
	struct smtp_client_msg m = {.sender = "",
				    .rcpts = rc,
				    .rcpt_count = 2,
				    .body_len = b.n,
				    .body_read = body_read,
				    .body_user = &b};
	const struct smtp_client_cb ccb2 = {.send = rt_csend,
					    .message_done = rt_done,
					    .failed = rt_failed,
					    .closed = rt_cclosed};

	rt_open(&r, &sc, &sst, &cc, &ccb2, &cst, 8);
	CU_ASSERT_EQUAL(smtp_client_send_message(r.c, &m), 0);
	smtp_client_start(r.c, false);
	smtp_session_start(r.s);
	for (int i = 0; i < 1000 && !smtp_client_is_dead(r.c); i++) {
		if (r.commit_pending) {
			r.commit_pending = false;
			smtp_session_message_done(r.s, 0, "Q43");
		}
		if (r.s2c_len) {
			rt_to_client_no_chunking(&r);
		} else if (r.c2s_len) {
			static uint8_t tmp[sizeof(r.c2s)];
			size_t n = r.c2s_len;
			memcpy(tmp, r.c2s, n);
			r.c2s_len = 0;
			/* the client's bytes reach the server one at a time */
			for (size_t k = 0; k < n; k++)
				CU_ASSERT_EQUAL(smtp_session_input(r.s, tmp + k, 1), 1);
		} else if (!r.commit_pending) {
			break;
		}
	}
	CU_ASSERT_STRING_EQUAL(r.ev, "closed;");
	CU_ASSERT_EQUAL(r.delivered, 2);
	const char *hdr_end = strstr(r.msg, "\r\n.a\r\n");
	CU_ASSERT_PTR_NOT_NULL_FATAL(hdr_end);
	CU_ASSERT_STRING_EQUAL(hdr_end + 2, ".a\r\n..b\r\n.\r\nc\r\n");
	CU_ASSERT_EQUAL(cst.data_messages, 1);
	CU_ASSERT_EQUAL(cst.bdat_messages, 0);
	smtp_client_free(r.c);
	smtp_session_free(r.s);
}

/*
 * Pipelined behind "." against lib/smtp's server with CHUNKING hidden: the server
 * gets content, "." and the next MAIL, RCPT and DATA in one segment and must take
 * each message once.  Messages are submitted after each message_done, as the relay does.
 */
static const struct smtp_client_msg *g_rt_msgs[3];
static size_t g_rt_next;

static void rt_fill(struct rt *r)
{
	while (g_rt_next < 3 && smtp_client_send_message(r->c, g_rt_msgs[g_rt_next]) == 0)
		g_rt_next++;
}

static void rt_pipe_done(void *user, const struct smtp_client_result *res)
{
	struct rt *r = user;
	r->delivered += res->delivered;
	CU_ASSERT_EQUAL(res->rcpt_count, 2);
}

static void test_round_trip_pipe_dot(void)
{
	static struct rt r;
	struct smtp_server_conf sc;
	struct smtp_server_stats sst;
	struct smtp_client_conf cc = cconf();
	struct smtp_client_stats cst;
	static const char body[] = "Subject: p\r\n\r\n.a\r\n.\r\nend";
	struct body b = {body, sizeof(body) - 1, -1};
	struct smtp_client_rcpt rc[] = {{"a@example.com", 0, NULL}, {"b@example.com", 0, NULL}};
	struct smtp_client_msg m = {.sender = "dev@fleet.test",
				    .rcpts = rc,
				    .rcpt_count = 2,
				    .body_len = b.n,
				    .body_read = body_read,
				    .body_user = &b};
	const struct smtp_client_cb ccb2 = {.send = rt_csend,
					    .message_done = rt_pipe_done,
					    .failed = rt_failed,
					    .closed = rt_cclosed};
	unsigned commits = 0;

	g_rt_msgs[0] = g_rt_msgs[1] = g_rt_msgs[2] = &m;
	g_rt_next = 0;
	cc.max_txns_in_flight = 3;
	rt_open(&r, &sc, &sst, &cc, &ccb2, &cst, 9);
	smtp_client_start(r.c, false);
	smtp_session_start(r.s);
	for (int i = 0; i < 1000 && !smtp_client_is_dead(r.c); i++) {
		if (smtp_client_caps(r.c)->esmtp)
			rt_fill(&r);
		if (g_rt_next == 3 && r.delivered == 6)
			smtp_client_quit(r.c);
		if (r.commit_pending) {
			r.commit_pending = false;
			commits++;
			smtp_session_message_done(r.s, 0, "Q44");
		}
		if (r.s2c_len) {
			rt_to_client_no_chunking(&r);
		} else if (r.c2s_len) {
			/* all the client wrote in one segment: "." and the next envelope together */
			static uint8_t tmp[sizeof(r.c2s)];
			size_t n = r.c2s_len;
			memcpy(tmp, r.c2s, n);
			r.c2s_len = 0;
			size_t k = smtp_session_input(r.s, tmp, n);
			CU_ASSERT_TRUE_FATAL(k <= n);
			/* what the server did not take yet (a commit pending) goes again */
			memcpy(r.c2s, tmp + k, n - k);
			r.c2s_len = n - k;
			if (k == 0 && !r.commit_pending && !r.s2c_len)
				break;
		} else if (!r.commit_pending) {
			break;
		}
	}
	CU_ASSERT_STRING_EQUAL(r.ev, "closed;");
	CU_ASSERT_EQUAL(r.delivered, 6);
	CU_ASSERT_EQUAL(commits, 3);
	CU_ASSERT_EQUAL(sst.messages_accepted, 3);
	CU_ASSERT_EQUAL(cst.data_messages, 3);
	CU_ASSERT_EQUAL(cst.txns_pipelined, 2);
	CU_ASSERT_EQUAL(cst.rsets, 0);
	const char *hdr_end = strstr(r.msg, "\r\nSubject: p\r\n");
	CU_ASSERT_PTR_NOT_NULL_FATAL(hdr_end);
	CU_ASSERT_STRING_EQUAL(hdr_end + 2, "Subject: p\r\n\r\n.a\r\n.\r\nend\r\n");
	smtp_client_free(r.c);
	smtp_session_free(r.s);
}

/* ---- several transactions in flight (PIPELINING + CHUNKING, max_txns_in_flight) ---- */

#define EHLO_PC "250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
#define TXN1 MAIL1 RCPTA RCPTB "BDAT 37 LAST\r\n" BODY1
#define TXN_NEXT "RSET\r\n" TXN1
#define ENV_OK "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n"
#define RSET_OK "250 2.0.0 reset\r\n"
#define DELIVERED2 "M D250/2.0.0 D250/2.0.0;"

static const struct smtp_client_msg *const g_three[] = {&g_m1, &g_m1, &g_m1};

static void run_pipe(const char *name, unsigned depth_conf,
		     const struct smtp_client_msg *const *msgs, size_t nmsgs,
		     const struct step *steps, const char *expect_ev, struct smtp_client_stats *st)
{
	struct smtp_client_conf conf = cconf();

	conf.max_txns_in_flight = depth_conf;
	CU_ASSERT_EQUAL_FATAL(smtp_client_conf_check(&conf, NULL, 0), 0);
	g_fill = true;
	run_script(name, &conf, msgs, nmsgs, true, steps, expect_ev, st);
	g_fill = false;
}

static void test_pipe_depth2(void)
{
	struct smtp_client_stats st;
	const struct step s[] = {
		{GREET, EHLO},
		/* the second transaction follows the first's BDAT LAST, behind an RSET */
		{EHLO_PC, TXN1 TXN_NEXT},
		/* the first one's replies: the third takes its place at once */
		{ENV_OK "250 2.0.0 one\r\n", TXN_NEXT},
		{RSET_OK ENV_OK "250 2.0.0 two\r\n", ""},
		{RSET_OK ENV_OK "250 2.0.0 three\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_depth2", 2, g_three, 3, s, "R;" DELIVERED2 DELIVERED2 DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.txns_pipelined, 2);
	CU_ASSERT_EQUAL(st.messages_sent, 3);
	CU_ASSERT_EQUAL(st.rcpts_delivered, 6);
	CU_ASSERT_EQUAL(st.rsets, 0);
	CU_ASSERT_EQUAL(st.bdat_messages, 3);

	/* depth 3: all three on the wire before any reply */
	const struct step s3[] = {
		{GREET, EHLO},
		{EHLO_PC, TXN1 TXN_NEXT TXN_NEXT},
		{ENV_OK "250 2.0.0 one\r\n" RSET_OK ENV_OK "250 2.0.0 two\r\n", ""},
		{RSET_OK ENV_OK "250 2.0.0 three\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_depth3", 3, g_three, 3, s3, "R;" DELIVERED2 DELIVERED2 DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.txns_pipelined, 2);
}

/*
 * PIPELINING without CHUNKING: the next transaction's MAIL, RCPTs and DATA follow the
 * previous "." in the same flight, without RSET (RFC 2920 3.1, RFC 5321 4.1.1.4).
 */
#define TXND MAIL1 RCPTA RCPTB "DATA\r\n"
#define ENV354 "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n"

static void test_pipe_dot(void)
{
	struct smtp_client_stats st;
	const struct step s[] = {
		{GREET, EHLO},
		{EHLO_PIPE, TXND},
		/* the second waits for the first's "." and goes right behind it */
		{ENV354, BODY1_STUFFED TXND},
		{"250 2.0.0 one\r\n" ENV354, BODY1_STUFFED TXND},
		{"250 2.0.0 two\r\n" ENV354, BODY1_STUFFED},
		{"250 2.0.0 three\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	/* at most two DATA transactions are out, whatever the depth */
	for (unsigned d = 2; d <= SMTP_CLIENT_TXNS_MAX; d += SMTP_CLIENT_TXNS_MAX - 2) {
		run_pipe("pipe_dot", d, g_three, 3, s, "R;" DELIVERED2 DELIVERED2 DELIVERED2 "C;",
			 &st);
		CU_ASSERT_EQUAL(st.txns_pipelined, 2);
		CU_ASSERT_EQUAL(st.messages_sent, 3);
		CU_ASSERT_EQUAL(st.rcpts_delivered, 6);
		CU_ASSERT_EQUAL(st.rsets, 0);
		CU_ASSERT_EQUAL(st.data_messages, 3);
		CU_ASSERT_EQUAL(st.bdat_messages, 0);
		CU_ASSERT_EQUAL(st.body_bytes, 3 * (sizeof(BODY1) - 1));
	}
}

/*
 * The same, counted in transport writes, with a caller that submits as the relay's
 * delivery loop does: up to the depth at once, then one more after each message_done
 * has returned (not from inside it).  Once a message waits behind the newest, each
 * message costs one write: its content, ".", and the next one's envelope and DATA.
 */
static void test_pipe_dot_writes(void)
{
	static const struct smtp_client_msg *const four[] = {&g_m1, &g_m1, &g_m1, &g_m1};
	struct smtp_client_conf conf = cconf();
	struct ct *t = calloc(1, sizeof(*t));
	unsigned before;

	conf.max_txns_in_flight = 3;
	t->msgs = four;
	t->nmsgs = 4;
	t->late = true;
	CU_ASSERT_EQUAL_FATAL(smtp_client_new(&conf, &ccb, t, &t->st, &t->c), 0);
	fill(t);
	CU_ASSERT_EQUAL(t->next_msg, 1); /* nothing known of the server yet */
	smtp_client_start(t->c, false);
	feed(t, GREET, 0);
	feed(t, EHLO_PIPE, 0);
	fill(t);
	CU_ASSERT_EQUAL(smtp_client_txn_depth(t->c), 3);
	CU_ASSERT_EQUAL(t->next_msg, 3); /* one started, two waiting */
	CU_ASSERT_EQUAL(smtp_client_send_message(t->c, &g_m1), -EBUSY);
	CU_ASSERT_EQUAL(t->sends, 2); /* EHLO, then the first flight */
	CU_ASSERT_STRING_EQUAL(t->out + t->seg_off, TXND);
	/* the oldest reply due decides the deadline: MAIL's */
	CU_ASSERT_EQUAL(smtp_client_deadline(t->c), g_now + conf.timeout_mail_us);
	before = t->sends;
	feed(t, ENV354, 0);
	fill(t);
	CU_ASSERT_EQUAL(t->sends, before + 1);
	CU_ASSERT_STRING_EQUAL(t->out + t->seg_off, BODY1_STUFFED TXND);
	/* now the first one's ".", not the second's MAIL */
	CU_ASSERT_EQUAL(smtp_client_deadline(t->c), g_now + conf.timeout_data_done_us);
	CU_ASSERT_EQUAL(t->next_msg, 3); /* two out, one waiting: full */
	/* the first's end and the second's 354 in one segment: the third follows at once */
	for (int k = 0; k < 2; k++) {
		before = t->sends;
		feed(t, "250 2.0.0 done\r\n" ENV354, 0);
		CU_ASSERT_EQUAL(t->sends, before + 1);
		CU_ASSERT_STRING_EQUAL(t->out + t->seg_off, BODY1_STUFFED TXND);
		CU_ASSERT_EQUAL(t->ndone, (size_t)k + 1);
		fill(t); /* after message_done, as the relay's next poll turn */
		CU_ASSERT_EQUAL(t->next_msg, 4);
	}
	before = t->sends;
	feed(t, "250 2.0.0 done\r\n" ENV354, 0);
	CU_ASSERT_EQUAL(t->sends, before + 1);
	CU_ASSERT_STRING_EQUAL(t->out + t->seg_off, BODY1_STUFFED);
	feed(t, "250 2.0.0 done\r\n", 0);
	CU_ASSERT_TRUE(smtp_client_is_ready(t->c));
	CU_ASSERT_EQUAL(t->st.txns_pipelined, 3);
	CU_ASSERT_EQUAL(t->st.rsets, 0);
	CU_ASSERT_STRING_EQUAL(t->ev, "R;" DELIVERED2 DELIVERED2 DELIVERED2 DELIVERED2);
	/* dropped with two out and one waiting: each reported once, in order */
	t->next_msg = 0;
	t->ev_len = 0;
	t->ev[0] = '\0';
	fill(t);
	feed(t, ENV354, 0);
	CU_ASSERT_EQUAL(t->next_msg, 3);
	smtp_client_abort(t->c, "gone");
	CU_ASSERT_STRING_EQUAL(t->ev, "M T421/4.4.2 T421/4.4.2;M T421/4.4.2 T421/4.4.2;"
				      "M T421/4.4.2 T421/4.4.2;F421/4.4.2;");
	CU_ASSERT_EQUAL(t->ndone, 7);
	smtp_client_free(t->c);
	free(t);
}

/* Without PIPELINING (or with depth 1) the setting changes nothing: one at a time, no RSET. */
static void test_pipe_needs_pipelining(void)
{
	struct smtp_client_stats st;
	const struct step s[] = {
		{GREET, EHLO},
		{EHLO_PIPE, MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", BODY1_STUFFED},
		{"250 2.0.0 one\r\n", MAIL1 RCPTA RCPTB "DATA\r\n"},
		{"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", BODY1_STUFFED},
		{"250 2.0.0 two\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_depth1", 1, g_two, 2, s, "R;" DELIVERED2 DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.txns_pipelined, 0);
	const struct step s1[] = {
		{GREET, EHLO},
		{EHLO_BASIC, MAIL1},
		{"250 ok\r\n", RCPTA},
		{"250 ok\r\n", RCPTB},
		{"250 ok\r\n", "DATA\r\n"},
		{"354 go\r\n", BODY1_STUFFED},
		{"250 2.0.0 one\r\n", MAIL1},
		{"250 ok\r\n", RCPTA},
		{"250 ok\r\n", RCPTB},
		{"250 ok\r\n", "DATA\r\n"},
		{"354 go\r\n", BODY1_STUFFED},
		{"250 2.0.0 two\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_data_lockstep", 4, g_two, 2, s1, "R;" DELIVERED2 DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.txns_pipelined, 0);
	CU_ASSERT_EQUAL(st.pipelined_flights, 0);
	const struct step s2[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250 CHUNKING\r\n", MAIL1},
		{"250 ok\r\n", RCPTA},
		{"250 ok\r\n", RCPTB},
		{"250 ok\r\n", "BDAT 37 LAST\r\n" BODY1},
		{"250 2.0.0 one\r\n", MAIL1},
		{"250 ok\r\n", RCPTA},
		{"250 ok\r\n", RCPTB},
		{"250 ok\r\n", "BDAT 37 LAST\r\n" BODY1},
		{"250 2.0.0 two\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_needs_pipelining", 4, g_two, 2, s2, "R;" DELIVERED2 DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.txns_pipelined, 0);
}

/* Every failure of a DATA transaction pipelined behind a ".", or of the one before it. */
static void test_pipe_dot_failures(void)
{
	struct smtp_client_stats st;
	/* the first "." refused after the second MAIL went: each gets its own reply, no RSET */
	const struct step dot[] = {
		{GREET, EHLO},
		{EHLO_PIPE, TXND},
		{ENV354, BODY1_STUFFED TXND},
		{"452 4.3.1 disk full\r\n" ENV354, BODY1_STUFFED TXND},
		{"554 5.6.0 rejected\r\n" ENV354, BODY1_STUFFED},
		{"250 2.0.0 three\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_dot_refused", 2, g_three, 3, dot,
		 "R;M T452/4.3.1 T452/4.3.1;M B554/5.6.0 B554/5.6.0;" DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.rsets, 0);
	CU_ASSERT_EQUAL(st.rcpts_deferred, 2);
	CU_ASSERT_EQUAL(st.rcpts_bounced, 2);
	CU_ASSERT_EQUAL(st.rcpts_delivered, 2);
	CU_ASSERT_EQUAL(st.txns_pipelined, 2);

	/* every RCPT of the second refused: DATA gets 554, no content, RSET, the third goes on */
	const struct step rcpts[] = {
		{GREET, EHLO},
		{EHLO_PIPE, TXND},
		{ENV354, BODY1_STUFFED TXND},
		{"250 2.0.0 one\r\n250 2.1.0 ok\r\n550 5.1.1 no\r\n450 4.2.1 later\r\n"
		 "554 5.5.1 no valid recipients\r\n",
		 "RSET\r\n"},
		{RSET_OK, TXND},
		{ENV354, BODY1_STUFFED},
		{"250 2.0.0 three\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_dot_rcpts_refused", 2, g_three, 3, rcpts,
		 "R;" DELIVERED2 "M B550/5.1.1 T450/4.2.1;" DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.rsets, 1);
	CU_ASSERT_EQUAL(st.txns_pipelined, 1);

	/* the second's MAIL refused: its RCPTs and DATA get 503; RSET, no content */
	const struct step mail[] = {
		{GREET, EHLO},
		{EHLO_PIPE, TXND},
		{ENV354, BODY1_STUFFED TXND},
		{"250 2.0.0 one\r\n550 5.1.8 bad sender\r\n503 5.5.1 need MAIL\r\n"
		 "503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n",
		 "RSET\r\n"},
		{RSET_OK, "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_dot_mail_refused", 2, g_two, 2, mail,
		 "R;" DELIVERED2 "M B550/5.1.8 B550/5.1.8;C;", &st);
	CU_ASSERT_EQUAL(st.rsets, 1);

	/* 354 though every RCPT of the second was refused: an empty message ends it, and the
	 * third follows that "." (its reply ends the transaction too) */
	const struct step empty[] = {
		{GREET, EHLO},
		{EHLO_PIPE, TXND},
		{ENV354, BODY1_STUFFED TXND},
		{"250 2.0.0 one\r\n250 2.1.0 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n354 go\r\n",
		 ".\r\n" TXND},
		{"250 2.0.0 empty\r\n" ENV354, BODY1_STUFFED},
		{"250 2.0.0 three\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_dot_discard", 2, g_three, 3, empty,
		 "R;" DELIVERED2 "M B550/5.1.1 B550/5.1.1;" DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.rsets, 0);
	CU_ASSERT_EQUAL(st.rcpts_bounced, 2);
	CU_ASSERT_EQUAL(st.rcpts_delivered, 4);

	/* a 421 with two transactions out: both deferred with the server's words, once */
	const struct step r421[] = {
		{GREET, EHLO},
		{EHLO_PIPE, TXND},
		{ENV354, BODY1_STUFFED TXND},
		{"421 4.3.2 shutting down\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_dot_421", 2, g_two, 2, r421,
		 "R;M T421/4.3.2 T421/4.3.2;M T421/4.3.2 T421/4.3.2;F421/4.3.2;", &st);
	CU_ASSERT_EQUAL(st.rcpts_deferred, 4);
	CU_ASSERT_EQUAL(st.messages_deferred, 2);

	/* the connection drops after the first's 250: only the second is deferred */
	const struct step drop[] = {
		{GREET, EHLO},
		{EHLO_PIPE, TXND},
		{ENV354, BODY1_STUFFED TXND},
		{"250 2.0.0 one\r\n250 2.1.0 ok\r\n", ""},
		{ABORT_STEP, ""},
		{NULL, NULL},
	};
	run_pipe("pipe_dot_dropped", 2, g_two, 2, drop,
		 "R;" DELIVERED2 "M T421/4.4.2 T421/4.4.2;F421/4.4.2;", &st);
	CU_ASSERT_EQUAL(st.rcpts_delivered, 2);
	CU_ASSERT_EQUAL(st.rcpts_deferred, 2);

	/* no answer to the first "." nor to the second's commands: both deferred */
	const struct step tmo[] = {
		{GREET, EHLO},
		{EHLO_PIPE, TXND},
		{ENV354, BODY1_STUFFED TXND},
		{TIMEOUT_STEP, ""},
		{NULL, NULL},
	};
	run_pipe("pipe_dot_timeout", 2, g_two, 2, tmo,
		 "R;M T421/4.4.2 T421/4.4.2;M T421/4.4.2 T421/4.4.2;F421/4.4.2;", &st);
	CU_ASSERT_EQUAL(st.timeouts, 1);
	CU_ASSERT_EQUAL(st.rcpts_deferred, 4);

	/* the second gets 354, then its "." is refused: bounced, the session goes on */
	const struct step rej[] = {
		{GREET, EHLO},
		{EHLO_PIPE, TXND},
		{ENV354, BODY1_STUFFED TXND},
		{"250 2.0.0 one\r\n" ENV354, BODY1_STUFFED},
		{"550 5.7.1 content rejected\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_dot_354_then_refused", 2, g_two, 2, rej,
		 "R;" DELIVERED2 "M B550/5.7.1 B550/5.7.1;C;", &st);
	CU_ASSERT_EQUAL(st.rsets, 0);
}

/* Not behind a "." when the session is to close, nor with a message this server refuses. */
static void test_pipe_dot_holds(void)
{
	struct smtp_client_stats st;
	/* QUIT asked while the first is out: the second starts only after its reply */
	const struct step quit[] = {
		{GREET, EHLO},
		{EHLO_PIPE, TXND},
		{QUIT_STEP, ""},
		{ENV354, BODY1_STUFFED},
		{"250 2.0.0 one\r\n", TXND},
		{ENV354, BODY1_STUFFED},
		{"250 2.0.0 two\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_dot_quit", 2, g_two, 2, quit, "R;" DELIVERED2 DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.txns_pipelined, 0);

	/* SMTPUTF8 to a server without it: reported after the first, in order */
	struct smtp_client_msg utf8 = g_m1;
	const struct smtp_client_msg *ms[] = {&g_m1, &utf8, &g_m1};

	utf8.smtputf8 = true;
	const struct step order[] = {
		{GREET, EHLO},
		{EHLO_PIPE, TXND},
		{ENV354, BODY1_STUFFED},
		{"250 2.0.0 one\r\n", TXND},
		{ENV354, BODY1_STUFFED},
		{"250 2.0.0 three\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_dot_order", 2, ms, 3, order,
		 "R;" DELIVERED2 "M B553/5.6.7 B553/5.6.7;" DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.refused_local, 1);
	CU_ASSERT_EQUAL(st.txns_pipelined, 0);
}

/* Every failure place of the first transaction while the second is on the wire. */
static void test_pipe_failures(void)
{
	struct smtp_client_stats st;
	/* MAIL refused: its RCPTs and BDAT get 503; the second is delivered (no extra RSET) */
	const struct step mail[] = {
		{GREET, EHLO},
		{EHLO_PC, TXN1 TXN_NEXT},
		{"550 5.1.8 bad sender\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"
		 "503 5.5.1 need MAIL\r\n",
		 ""},
		{RSET_OK ENV_OK "250 2.0.0 two\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_mail_refused", 2, g_two, 2, mail,
		 "R;M B550/5.1.8 B550/5.1.8;" DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.rsets, 0);
	CU_ASSERT_EQUAL(st.rcpts_bounced, 2);
	CU_ASSERT_EQUAL(st.rcpts_delivered, 2);

	/* MAIL 4xx: deferred, not bounced */
	const struct step mail4[] = {
		{GREET, EHLO},
		{EHLO_PC, TXN1 TXN_NEXT},
		{"451 4.3.0 busy\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"
		 "503 5.5.1 need MAIL\r\n" RSET_OK ENV_OK "250 2.0.0 two\r\n",
		 "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_mail_4xx", 2, g_two, 2, mail4, "R;M T451/4.3.0 T451/4.3.0;" DELIVERED2 "C;",
		 &st);

	/* one RCPT of the second transaction refused: per recipient */
	const struct step rcpt[] = {
		{GREET, EHLO},
		{EHLO_PC, TXN1 TXN_NEXT},
		{ENV_OK "250 2.0.0 one\r\n" RSET_OK
			"250 2.1.0 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n"
			"250 2.0.0 two\r\n",
		 "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_rcpt_refused", 2, g_two, 2, rcpt,
		 "R;" DELIVERED2 "M B550/5.1.1 D250/2.0.0;C;", &st);

	/* every RCPT of the first refused: BDAT LAST gets 554; the second's RSET cleans up */
	const struct step all[] = {
		{GREET, EHLO},
		{EHLO_PC, TXN1 TXN_NEXT},
		{"250 2.1.0 ok\r\n550 5.1.1 no\r\n450 4.2.1 later\r\n"
		 "554 5.5.1 no valid recipients\r\n" RSET_OK ENV_OK "250 2.0.0 two\r\n",
		 "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_rcpts_refused", 2, g_two, 2, all,
		 "R;M B550/5.1.1 T450/4.2.1;" DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.rsets, 0);

	/* the data reply of the first: 4xx defers it, the second goes on */
	const struct step data[] = {
		{GREET, EHLO},
		{EHLO_PC, TXN1 TXN_NEXT},
		{ENV_OK "452 4.3.1 disk full\r\n", ""},
		{RSET_OK ENV_OK "554 5.6.0 rejected\r\n", "RSET\r\n"},
		{"250 ok\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_data_reply", 2, g_two, 2, data,
		 "R;M T452/4.3.1 T452/4.3.1;M B554/5.6.0 B554/5.6.0;C;", &st);
	CU_ASSERT_EQUAL(st.rsets, 1); /* after the last one failed, nothing behind it */

	/* the RSET of the second refused: the session is in an unknown state and fails */
	const struct step rset[] = {
		{GREET, EHLO},
		{EHLO_PC, TXN1 TXN_NEXT},
		{ENV_OK "250 2.0.0 one\r\n500 5.5.2 what\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_rset_refused", 2, g_two, 2, rset,
		 "R;" DELIVERED2 "M T421/4.4.2 T421/4.4.2;F500/5.5.2;", &st);
	CU_ASSERT_EQUAL(st.rcpts_deferred, 2);

	/* the connection drops with two transactions outstanding: both deferred, in order */
	const struct step drop[] = {
		{GREET, EHLO}, {EHLO_PC, TXN1 TXN_NEXT}, {"250 2.1.0 ok\r\n", ""}, {ABORT_STEP, ""},
		{NULL, NULL},
	};
	run_pipe("pipe_dropped", 2, g_two, 2, drop,
		 "R;M T421/4.4.2 T421/4.4.2;M T421/4.4.2 T421/4.4.2;F421/4.4.2;", &st);
	CU_ASSERT_EQUAL(st.rcpts_deferred, 4);
	CU_ASSERT_EQUAL(st.rcpts_delivered, 0);

	/* a 421 in the middle: the same, with the server's words */
	const struct step r421[] = {
		{GREET, EHLO},
		{EHLO_PC, TXN1 TXN_NEXT},
		{ENV_OK "250 2.0.0 one\r\n421 4.3.2 shutting down\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_421", 2, g_two, 2, r421,
		 "R;" DELIVERED2 "M T421/4.3.2 T421/4.3.2;F421/4.3.2;", &st);
	CU_ASSERT_EQUAL(st.rcpts_delivered, 2);
	CU_ASSERT_EQUAL(st.rcpts_deferred, 2);
}

/* A message this server cannot take waits for the pipeline to drain: reports stay in order. */
static void test_pipe_order(void)
{
	struct smtp_client_stats st;
	struct smtp_client_msg eight = g_m1;
	const struct smtp_client_msg *ms[] = {&g_m1, &eight, &g_m1};

	eight.body_8bit = true;
	const struct step s[] = {
		{GREET, EHLO},
		{"250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n", TXN1},
		/* the refusal is reported after the first, then the third starts afresh */
		{ENV_OK "250 2.0.0 one\r\n", TXN1},
		{ENV_OK "250 2.0.0 three\r\n", "QUIT\r\n"},
		{"221 bye\r\n", ""},
		{NULL, NULL},
	};
	run_pipe("pipe_order", 2, ms, 3, s,
		 "R;" DELIVERED2 "M B554/5.6.3 B554/5.6.3;" DELIVERED2 "C;", &st);
	CU_ASSERT_EQUAL(st.refused_local, 1);
}

static void test_pipe_api(void)
{
	struct smtp_client_conf conf = cconf();
	struct ct *t = calloc(1, sizeof(*t));

	conf.max_txns_in_flight = SMTP_CLIENT_TXNS_MAX + 1;
	CU_ASSERT_EQUAL(smtp_client_conf_check(&conf, NULL, 0), -EINVAL);
	conf.max_txns_in_flight = 2;
	CU_ASSERT_EQUAL_FATAL(smtp_client_new(&conf, &ccb, t, &t->st, &t->c), 0);
	CU_ASSERT_EQUAL(smtp_client_txn_depth(t->c), 1); /* nothing known of the server yet */
	CU_ASSERT_EQUAL(smtp_client_send_message(t->c, &g_m1), 0);
	CU_ASSERT_EQUAL(smtp_client_send_message(t->c, &g_m1), -EBUSY);
	smtp_client_start(t->c, false);
	feed(t, GREET, 0);
	feed(t, EHLO_PC, 0);
	CU_ASSERT_EQUAL(smtp_client_txn_depth(t->c), 2);
	CU_ASSERT_EQUAL(smtp_client_send_message(t->c, &g_m1), 0);
	CU_ASSERT_EQUAL(smtp_client_send_message(t->c, &g_m1), -EBUSY); /* two in flight */
	CU_ASSERT_STRING_EQUAL(t->out, EHLO TXN1 TXN_NEXT);
	smtp_client_free(t->c); /* both reported deferred */
	CU_ASSERT_STRING_EQUAL(t->ev,
			       "R;M T421/4.4.2 T421/4.4.2;M T421/4.4.2 T421/4.4.2;F421/4.4.2;");
	free(t);
}

static CU_TestInfo client_tests[] = {
	{"reply_parser", test_reply_parser},
	{"basic_data", test_basic_data},
	{"pipelined_partial", test_pipelined_partial},
	{"no_pipelining", test_no_pipelining},
	{"dot_stuffing", test_dot_stuffing},
	{"bdat_pipelined", test_bdat_pipelined},
	{"bdat_lockstep", test_bdat_lockstep},
	{"greeting_errors", test_greeting_errors},
	{"helo_fallback", test_helo_fallback},
	{"starttls", test_starttls},
	{"auth", test_auth},
	{"mail_refused", test_mail_refused},
	{"rcpts_refused", test_rcpts_refused},
	{"data_errors", test_data_errors},
	{"two_messages", test_two_messages},
	{"reuse", test_reuse},
	{"capability_refusals", test_capability_refusals},
	{"dsn_params", test_dsn_params},
	{"421_and_malformed", test_421_and_malformed},
	{"timeouts", test_timeouts},
	{"large_body", test_large_body},
	{"conf_and_api", test_conf_and_api},
	{"round_trip_bdat", test_round_trip_bdat},
	{"round_trip_data", test_round_trip_data},
	{"round_trip_pipe_dot", test_round_trip_pipe_dot},
	{"pipe_depth2", test_pipe_depth2},
	{"pipe_dot", test_pipe_dot},
	{"pipe_dot_writes", test_pipe_dot_writes},
	{"pipe_needs_pipelining", test_pipe_needs_pipelining},
	{"pipe_dot_failures", test_pipe_dot_failures},
	{"pipe_dot_holds", test_pipe_dot_holds},
	{"pipe_failures", test_pipe_failures},
	{"pipe_order", test_pipe_order},
	{"pipe_api", test_pipe_api},
	CU_TEST_INFO_NULL,
};

static CU_SuiteInfo suites[] = {
	{"smtp_client", NULL, NULL, NULL, NULL, client_tests},
	CU_SUITE_INFO_NULL,
};

int main(void)
{
	return mx_test_run(suites);
}

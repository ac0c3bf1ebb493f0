/*
 * test_smtp.c - the SMTP server session (lib/smtp/server.c), and main() for
 * the lib/smtp suites.
 *
 * conv() runs a conversation and, before returning the result of feeding it
 * in one segment, feeds it again byte by byte and at random split points,
 * with the commit answered inside message_end or after the input call, and
 * asserts that the output stream, the callback sequence, the message content
 * and the counters are identical: every conversation in this file is a
 * segmentation-invariance test too.
 */
#include "smtp.h"
#include "mx_test.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_smtp.h"

#define BUF_MAX (512 * 1024)
#define TRUSTED 0x0a4d0005u  /* 10.77.0.5, in allow_networks */
#define STRANGER 0xcb007109u /* 203.0.113.9 */

enum commit_mode { COMMIT_SYNC, COMMIT_DEFERRED, COMMIT_MANUAL };

struct run {
	char out[BUF_MAX];
	size_t out_len;
	char ev[BUF_MAX]; /* callbacks in order; consecutive data merged */
	size_t ev_len;
	char last;
	char msg[BUF_MAX]; /* content of the last message */
	size_t msg_len;
	enum commit_mode commit_mode;
	bool commit_pending, tls_pending, auto_tls;
	int commit_status;
	int sends, begins, ends, aborts, closes, starttls;
	struct smtp_server_stats st;
	struct smtp_session *s;
	/* envelope as seen at message_end */
	char from[SMTP_PATH_MAX + 1];
	char rcpt0[SMTP_PATH_MAX + 1];
	char orcpt0[SMTP_ORCPT_MAX + 1];
	uint8_t notify0;
	size_t rcpt_count;
	char envid[SMTP_ENVID_MAX + 1];
	char auth_user[SMTP_PATH_MAX + 1];
	bool env_tls, env_auth;
	enum smtp_dsn_ret ret;
	enum smtp_body body;
	bool smtputf8;
	uint64_t declared_size, message_size;
};

static bool g_overloaded;
static uint64_t g_now = 5000000;

static uint64_t clock_us(void)
{
	return g_now;
}

static int64_t clock_wall(void)
{
	return 1700000000; /* Tue, 14 Nov 2023 22:13:20 +0000 */
}

static void ev_add(struct run *r, char kind, const void *p, size_t n)
{
	if (kind != 'D' || r->last != 'D') {
		if (r->ev_len + 3 < BUF_MAX) {
			r->ev[r->ev_len++] = '\n';
			r->ev[r->ev_len++] = kind;
		}
	}
	r->last = kind;
	if (n && r->ev_len + n < BUF_MAX) {
		memcpy(r->ev + r->ev_len, p, n);
		r->ev_len += n;
	}
}

static void cb_send(void *user, const uint8_t *p, size_t n)
{
	struct run *r = user;
	CU_ASSERT_TRUE(n > 0);
	if (r->out_len + n < BUF_MAX) {
		memcpy(r->out + r->out_len, p, n);
		r->out_len += n;
		r->out[r->out_len] = '\0';
	}
	r->sends++;
}

static void cb_close(void *user)
{
	struct run *r = user;
	r->closes++;
	ev_add(r, 'C', NULL, 0);
}

static void cb_starttls(void *user)
{
	struct run *r = user;
	r->starttls++;
	r->tls_pending = true;
	ev_add(r, 'T', NULL, 0);
}

static bool cb_may_start(void *user)
{
	(void)user;
	return !g_overloaded;
}

static int cb_auth(void *user, const char *authzid, const char *authcid, const char *pass)
{
	(void)user;
	(void)authzid;
	if (strcmp(authcid, "tempfail") == 0)
		return -EIO;
	return strcmp(authcid, "dev1") == 0 && strcmp(pass, "secret") == 0 ? 0 : -EACCES;
}

static void cb_begin(void *user)
{
	struct run *r = user;
	r->begins++;
	r->msg_len = 0;
	ev_add(r, 'B', NULL, 0);
}

static void cb_data(void *user, const uint8_t *p, size_t n)
{
	struct run *r = user;
	CU_ASSERT_TRUE(n > 0);
	if (r->msg_len + n < BUF_MAX) {
		memcpy(r->msg + r->msg_len, p, n);
		r->msg_len += n;
		r->msg[r->msg_len] = '\0';
	}
	ev_add(r, 'D', p, n);
}

static void cb_end(void *user, const struct smtp_envelope *env)
{
	struct run *r = user;
	r->ends++;
	ev_add(r, 'E', NULL, 0);
	snprintf(r->from, sizeof(r->from), "%s", env->mail_from.text);
	r->rcpt_count = env->rcpt_count;
	r->rcpt0[0] = r->orcpt0[0] = '\0';
	r->notify0 = 0;
	if (env->rcpt_count) {
		snprintf(r->rcpt0, sizeof(r->rcpt0), "%s", env->rcpts[0].addr.text);
		snprintf(r->orcpt0, sizeof(r->orcpt0), "%s", env->rcpts[0].orcpt);
		r->notify0 = env->rcpts[0].notify;
	}
	snprintf(r->envid, sizeof(r->envid), "%s", env->envid);
	snprintf(r->auth_user, sizeof(r->auth_user), "%s", env->auth_user);
	r->env_tls = env->tls;
	r->env_auth = env->authenticated;
	r->ret = env->ret;
	r->body = env->body;
	r->smtputf8 = env->smtputf8;
	r->declared_size = env->declared_size;
	r->message_size = env->message_size;
	if (r->commit_mode == COMMIT_SYNC)
		smtp_session_message_done(r->s, r->commit_status, "Q1");
	else
		r->commit_pending = true;
}

static void cb_abort(void *user)
{
	struct run *r = user;
	r->aborts++;
	ev_add(r, 'A', NULL, 0);
}

static const struct smtp_server_cb test_cb = {
	.send = cb_send,
	.close = cb_close,
	.starttls = cb_starttls,
	.may_start_transaction = cb_may_start,
	.auth_check = cb_auth,
	.message_begin = cb_begin,
	.message_data = cb_data,
	.message_end = cb_end,
	.message_abort = cb_abort,
};

static const char *const locals[] = {"example.com", "[192.0.2.10]"};
static const char *const relays[] = {"relay.example.org"};
static const struct smtp_ipv4_prefix nets[] = {{0x0a4d0000u, 16}};

static struct smtp_server_conf base_conf(void)
{
	struct smtp_server_conf c;

	smtp_server_conf_defaults(&c);
	c.hostname = "mx.example.net";
	c.tls_available = true;
	c.local_domains = locals;
	c.local_domain_count = 2;
	c.relay_domains = relays;
	c.relay_domain_count = 1;
	c.allow_networks = nets;
	c.allow_network_count = 1;
	c.now_us = clock_us;
	c.wall_s = clock_wall;
	return c;
}

/* After each input call, like a transport would: finish the commit, the handshake. */
static void after_input(struct run *r)
{
	while (r->commit_pending && r->commit_mode == COMMIT_DEFERRED) {
		r->commit_pending = false;
		smtp_session_message_done(r->s, r->commit_status, "Q1");
	}
	if (r->tls_pending && r->auto_tls) {
		r->tls_pending = false;
		smtp_session_tls_started(r->s, "TLSv1.3", "TLS_AES_128_GCM_SHA256");
	}
}

static void feed(struct run *r, const void *data, size_t n, size_t seg)
{
	const uint8_t *p = data;
	size_t off = 0;
	int stalls = 0;

	while (off < n && !smtp_session_is_closed(r->s)) {
		size_t len = n - off < seg ? n - off : seg;
		size_t k = smtp_session_input(r->s, p + off, len);
		CU_ASSERT_TRUE(k <= len);
		off += k;
		after_input(r);
		if (k == 0 && ++stalls > 100) {
			CU_FAIL("input stalled");
			break;
		}
	}
}

static void feed_s(struct run *r, const char *s)
{
	feed(r, s, strlen(s), strlen(s));
}

static uint32_t rng_state;

static uint32_t rng(void)
{
	rng_state = rng_state * 1103515245u + 12345u;
	return rng_state >> 16;
}

/* Feed at random split points (seed) */
static void feed_random(struct run *r, const void *data, size_t n, uint32_t seed)
{
	const uint8_t *p = data;
	size_t off = 0;

	rng_state = seed;
	while (off < n && !smtp_session_is_closed(r->s)) {
		size_t seg = 1 + rng() % 23;
		if (seg > n - off)
			seg = n - off;
		feed(r, p + off, seg, seg);
		off += seg;
	}
}

struct opts {
	const struct smtp_server_conf *conf;
	uint32_t ip;
	bool implicit_tls; /* tls_started before the greeting */
	int commit_status;
};

static void run_start(struct run *r, const struct opts *o, enum commit_mode mode)
{
	memset(r, 0, sizeof(*r));
	r->commit_mode = mode;
	r->commit_status = o->commit_status;
	r->auto_tls = true;
	int rc = smtp_session_new(o->conf, &test_cb, r, &r->st, o->ip, 0xABC, &r->s);
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	if (o->implicit_tls)
		smtp_session_tls_started(r->s, "TLSv1.3", "TLS_AES_128_GCM_SHA256");
	smtp_session_start(r->s);
}

static void run_end(struct run *r)
{
	smtp_session_free(r->s);
	r->s = NULL;
}

static struct run ref_run, alt_run;

static void compare_runs(const struct run *a, const struct run *b, const char *what)
{
	bool same = a->out_len == b->out_len && memcmp(a->out, b->out, a->out_len) == 0 &&
		    a->ev_len == b->ev_len && memcmp(a->ev, b->ev, a->ev_len) == 0 &&
		    a->msg_len == b->msg_len && memcmp(a->msg, b->msg, a->msg_len) == 0 &&
		    memcmp(a->st.rejects, b->st.rejects, sizeof(a->st.rejects)) == 0 &&
		    memcmp(a->st.commands, b->st.commands, sizeof(a->st.commands)) == 0 &&
		    a->st.replies_2xx == b->st.replies_2xx &&
		    a->st.replies_4xx == b->st.replies_4xx &&
		    a->st.replies_5xx == b->st.replies_5xx &&
		    a->st.messages_accepted == b->st.messages_accepted &&
		    a->st.message_bytes == b->st.message_bytes;
	if (!same) {
		fprintf(stderr,
			"\n  segmentation changed the result (%s)\n--- whole:\n%.*s\n--- "
			"%s:\n%.*s\n",
			what, (int)a->out_len, a->out, what, (int)b->out_len, b->out);
		fprintf(stderr, "--- ev whole:\n%.*s\n--- ev %s:\n%.*s\n", (int)a->ev_len, a->ev,
			what, (int)b->ev_len, b->ev);
	}
	CU_ASSERT_TRUE(same);
}

/* Run a conversation every way; return the one-segment run (session freed). */
static struct run *conv_n(const struct opts *o, const char *in, size_t n)
{
	static const char *const names[] = {"bytewise/sync", "whole/deferred", "bytewise/deferred",
					    "random"};

	run_start(&ref_run, o, COMMIT_SYNC);
	feed(&ref_run, in, n, n ? n : 1);
	run_end(&ref_run);
	for (int mode = 0; mode < 4 + 6; mode++) {
		enum commit_mode cm = (mode == 0 || mode >= 7) ? COMMIT_SYNC : COMMIT_DEFERRED;
		run_start(&alt_run, o, cm);
		if (mode == 0 || mode == 2)
			feed(&alt_run, in, n, 1);
		else if (mode == 1)
			feed(&alt_run, in, n, n ? n : 1);
		else
			feed_random(&alt_run, in, n, 77u + (uint32_t)mode * 1000003u);
		run_end(&alt_run);
		compare_runs(&ref_run, &alt_run, names[mode < 3 ? mode : 3]);
	}
	return &ref_run;
}

static struct run *conv(const struct opts *o, const char *in)
{
	return conv_n(o, in, strlen(in));
}

static struct run *conv_ip(uint32_t ip, const char *in)
{
	static struct smtp_server_conf c;
	struct opts o = {.conf = &c, .ip = ip};

	c = base_conf();
	return conv(&o, in);
}

/* Final-line reply codes, space separated: "220 250 354 250" */
static const char *codes(const struct run *r)
{
	static char buf[8192];
	size_t o = 0;
	const char *p = r->out, *end = r->out + r->out_len;

	buf[0] = '\0';
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			break;
		if (nl - p >= 4 && p[3] == ' ' && o + 5 < sizeof(buf)) {
			if (o)
				buf[o++] = ' ';
			memcpy(buf + o, p, 3);
			o += 3;
			buf[o] = '\0';
		}
		p = nl + 1;
	}
	return buf;
}

static bool has(const struct run *r, const char *s)
{
	return strstr(r->out, s) != NULL;
}

#define ASSERT_CODES(r, want)                                                                      \
	do {                                                                                       \
		const char *got_ = codes(r);                                                       \
		if (strcmp(got_, want) != 0)                                                       \
			fprintf(stderr, "\n  line %d: codes '%s' want '%s'\n%s", __LINE__, got_,   \
				want, (r)->out);                                                   \
		CU_ASSERT_STRING_EQUAL(got_, want);                                                \
	} while (0)

#define EHLO_MAIL_RCPT                                                                             \
	"EHLO dev.local\r\nMAIL FROM:<cam1@fleet.example>\r\nRCPT TO:<ops@example.com>\r\n"

static const char *received_plain = "Received: from dev.local ([10.77.0.5])\r\n"
				    "\tby mx.example.net (mxrelay) with ESMTP id ABC0001\r\n"
				    "\tfor <ops@example.com>; Tue, 14 Nov 2023 22:13:20 +0000\r\n";

/* ---- basic protocol ---------------------------------------------------------------- */

static void test_basic_transaction(void)
{
	struct run *r = conv_ip(TRUSTED, EHLO_MAIL_RCPT "DATA\r\nSubject: t\r\n\r\nhello\r\n"
							"..dot\r\n.\r\nQUIT\r\n");
	char want[1024];

	ASSERT_CODES(r, "220 250 250 250 354 250 221");
	CU_ASSERT_TRUE(has(r, "220 mx.example.net ESMTP mxrelay\r\n250-mx.example.net\r\n"
			      "250-PIPELINING\r\n250-SIZE 10485760\r\n250-8BITMIME\r\n"
			      "250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n"
			      "250-STARTTLS\r\n250 DSN\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
			      "354 End data with <CR><LF>.<CR><LF>\r\n"
			      "250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 Bye\r\n"));
	CU_ASSERT_FALSE(has(r, "AUTH"));
	snprintf(want, sizeof(want), "%sSubject: t\r\n\r\nhello\r\n.dot\r\n", received_plain);
	CU_ASSERT_STRING_EQUAL(r->msg, want);
	CU_ASSERT_EQUAL(r->begins, 1);
	CU_ASSERT_EQUAL(r->ends, 1);
	CU_ASSERT_EQUAL(r->aborts, 0);
	CU_ASSERT_EQUAL(r->closes, 1);
	CU_ASSERT_STRING_EQUAL(r->from, "cam1@fleet.example");
	CU_ASSERT_STRING_EQUAL(r->rcpt0, "ops@example.com");
	CU_ASSERT_EQUAL(r->message_size, strlen("Subject: t\r\n\r\nhello\r\n.dot\r\n"));
	CU_ASSERT_FALSE(r->env_tls || r->env_auth);
	CU_ASSERT_STRING_EQUAL(r->auth_user, "");
	CU_ASSERT_EQUAL(r->st.messages_accepted, 1);
	CU_ASSERT_EQUAL(r->st.sessions, 1);
	CU_ASSERT_EQUAL(r->st.commands[SMTP_VERB_EHLO], 1);
	CU_ASSERT_EQUAL(r->st.commands[SMTP_VERB_QUIT], 1);
	CU_ASSERT_EQUAL(r->st.replies_2xx, 6);
	CU_ASSERT_EQUAL(r->st.replies_3xx, 1);
	CU_ASSERT_EQUAL(r->st.replies_5xx, 0);
	CU_ASSERT_EQUAL(r->st.bytes_out, r->out_len);
	/* greeting, then EHLO..354 at the 354 sync point, then 250 before close */
	CU_ASSERT_EQUAL(r->sends, 3);
}

static void test_dot_stuffing(void)
{
	struct run *r = conv_ip(TRUSTED, EHLO_MAIL_RCPT "DATA\r\n..\r\n...\r\n.x\r\n. \r\na.\r\n"
							"\r\n.\r\n");
	char want[1024];

	ASSERT_CODES(r, "220 250 250 250 354 250");
	snprintf(want, sizeof(want), "%s.\r\n..\r\nx\r\n \r\na.\r\n\r\n", received_plain);
	CU_ASSERT_STRING_EQUAL(r->msg, want);

	/* empty message: the CRLF before the dot is the DATA command's own */
	r = conv_ip(TRUSTED, EHLO_MAIL_RCPT "DATA\r\n.\r\n");
	ASSERT_CODES(r, "220 250 250 250 354 250");
	CU_ASSERT_STRING_EQUAL(r->msg, received_plain);
	CU_ASSERT_EQUAL(r->message_size, 0);

	/* two messages in one session, pipelined after the dot */
	r = conv_ip(TRUSTED,
		    EHLO_MAIL_RCPT "DATA\r\none\r\n.\r\nMAIL FROM:<>\r\n"
				   "RCPT TO:<b@example.com>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n");
	ASSERT_CODES(r, "220 250 250 250 354 250 250 250 354 250 221");
	CU_ASSERT_EQUAL(r->ends, 2);
	CU_ASSERT_STRING_EQUAL(r->from, "");
	CU_ASSERT_PTR_NOT_NULL(strstr(r->msg, "id ABC0002"));
	CU_ASSERT_PTR_NOT_NULL(strstr(r->msg, "\r\ntwo\r\n"));
}

static void test_pipelining_one_write(void)
{
	struct run *r = conv_ip(TRUSTED, "EHLO a\r\nMAIL FROM:<a@b.example>\r\n"
					 "RCPT TO:<c@example.com>\r\nRCPT TO:<d@example.com>\r\n"
					 "NOOP\r\nRSET\r\n");

	ASSERT_CODES(r, "220 250 250 250 250 250 250");
	CU_ASSERT_EQUAL(r->sends, 2); /* greeting + one batch */
}

static void test_sequence_and_misc(void)
{
	struct run *r;

	r = conv_ip(TRUSTED,
		    "MAIL FROM:<a@b.example>\r\nHELO dev\r\nRCPT TO:<a@example.com>\r\n"
		    "DATA\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\n"
		    "DATA\r\nDATA x\r\nRSET x\r\nRSET\r\nNOOP hello\r\nVRFY ops\r\nVRFY\r\n"
		    "HELP\r\nFOO bar\r\nmail from:<x@y.example>\r\n");
	ASSERT_CODES(r, "220 503 250 503 503 250 503 503 501 501 250 250 252 501 214 500 250");
	CU_ASSERT_TRUE(has(r, "503 5.5.1 Error: send HELO/EHLO first\r\n"));
	CU_ASSERT_TRUE(has(r, "250 mx.example.net\r\n"));
	CU_ASSERT_TRUE(has(r, "503 5.5.1 Error: need MAIL command\r\n"));
	CU_ASSERT_TRUE(has(r, "503 5.5.1 Error: nested MAIL command\r\n"));
	CU_ASSERT_TRUE(has(r, "503 5.5.1 Error: need RCPT command\r\n"));
	CU_ASSERT_TRUE(has(r, "252 2.0.0 Cannot VRFY user"));
	CU_ASSERT_TRUE(has(r, "500 5.5.2 Error: command not recognized\r\n"));
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_BAD_SEQUENCE], 4);
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_NO_RCPTS], 1);
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_UNKNOWN_COMMAND], 1);
	CU_ASSERT_EQUAL(r->st.commands[SMTP_VERB_UNKNOWN], 1);
	CU_ASSERT_EQUAL(r->st.commands[SMTP_VERB_MAIL], 4);

	r = conv_ip(TRUSTED, "HELO\r\nEHLO bad host!\r\nEHLO ESP_3C61\r\nEHLO [10.77.0.5]\r\n"
			     "HELO [IPv6:2001:db8::5]\r\nEHLO a\x01\r\nEHLO ex\xc3\xa4mple\r\n");
	ASSERT_CODES(r, "220 501 501 250 250 250 500 501");
	CU_ASSERT_TRUE(has(r, "500 5.5.2 Error: invalid character in command\r\n"));

	/* the HELO name goes into Received:, with the SMTP protocol name */
	r = conv_ip(TRUSTED,
		    "HELO ESP_3C61\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<a@example.com>\r\n"
		    "RCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r\n");
	ASSERT_CODES(r, "220 250 250 250 250 354 250");
	CU_ASSERT_STRING_EQUAL(r->msg, "Received: from ESP_3C61 ([10.77.0.5])\r\n"
				       "\tby mx.example.net (mxrelay) with SMTP id ABC0001;\r\n"
				       "\tTue, 14 Nov 2023 22:13:20 +0000\r\nx\r\n");
	/* params need EHLO */
	r = conv_ip(TRUSTED, "HELO a\r\nMAIL FROM:<a@b.example> SIZE=10\r\n");
	ASSERT_CODES(r, "220 250 555");
}

static void test_mail_rcpt_params(void)
{
	struct run *r;

	r = conv_ip(TRUSTED, "EHLO a\r\nMAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME RET=HDRS "
			     "ENVID=QQ314159 AUTH=<>\r\n"
			     "RCPT TO:<ops@example.com> NOTIFY=SUCCESS,FAILURE "
			     "ORCPT=rfc822;ops+40example.com\r\nDATA\r\nx\r\n.\r\n");
	ASSERT_CODES(r, "220 250 250 250 354 250");
	CU_ASSERT_EQUAL(r->declared_size, 100);
	CU_ASSERT_EQUAL(r->body, SMTP_BODY_8BITMIME);
	CU_ASSERT_EQUAL(r->ret, SMTP_RET_HDRS);
	CU_ASSERT_STRING_EQUAL(r->envid, "QQ314159");
	CU_ASSERT_EQUAL(r->notify0, SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE);
	CU_ASSERT_STRING_EQUAL(r->orcpt0, "rfc822;ops+40example.com");

	r = conv_ip(
		TRUSTED,
		"EHLO a\r\nMAIL FROM:<a@b.example> SIZE=abc\r\nMAIL FROM:<a@b.example> SIZE\r\n"
		"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\nMAIL FROM:<a@b.example> RET=ALL\r\n"
		"MAIL FROM:<a@b.example> ENVID=a+2x\r\nMAIL FROM:<a@b.example> SIZE=1 SIZE=2\r\n"
		"MAIL FROM:<a@b.example> FOO=1\r\nMAIL FROM:<a@b.example> =x\r\n"
		"MAIL FROM:<a@b.example> SMTPUTF8=yes\r\nMAIL FROM:<a@b.example>SIZE=1\r\n"
		"MAIL FROM:<a@b.example> SIZE=99999999999999999999999\r\n"
		"MAIL FROM:<a@b.example> SIZE=10485760\r\n"
		"RCPT TO:<a@example.com> NOTIFY=NEVER,SUCCESS\r\n"
		"RCPT TO:<a@example.com> NOTIFY=DELAY,DELAY\r\nRCPT TO:<a@example.com> NOTIFY=\r\n"
		"RCPT TO:<a@example.com> ORCPT=rfc822\r\nRCPT TO:<a@example.com> ORCPT=;x\r\n"
		"RCPT TO:<a@example.com> ORCPT=rfc822;a+zz\r\nRCPT TO:<a@example.com> BODY=7BIT\r\n"
		"RCPT TO:<a@example.com> NOTIFY=NEVER\r\n");
	ASSERT_CODES(r, "220 250 501 501 555 501 501 501 555 501 501 501 552 250 "
			"501 501 501 501 501 501 555 250");
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_SIZE_DECLARED], 1);
	CU_ASSERT_TRUE(has(r, "552 5.3.4 Error: message size exceeds limit\r\n"));

	/* SMTPUTF8 (RFC 6531) */
	r = conv_ip(TRUSTED, "EHLO a\r\nMAIL FROM:<j\xc3\xb6rg@b\xc3\xbc"
			     "cher.example>\r\n"
			     "MAIL FROM:<j\xc3\xb6rg@b\xc3\xbc"
			     "cher.example> SMTPUTF8\r\n"
			     "RCPT TO:<\xc3\xa9@example.com>\r\nMAIL FROM:<a@b.example>\r\n"
			     "RSET\r\nMAIL FROM:<a\xff@b.example> SMTPUTF8\r\n"
			     "MAIL FROM:<a@b.example>\r\nRCPT TO:<\xc3\xa9@example.com>\r\n");
	ASSERT_CODES(r, "220 250 553 250 250 503 250 501 250 553");
	CU_ASSERT_TRUE(has(r, "553 5.6.7 "));
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_NEED_SMTPUTF8], 2);

	/* bad addresses */
	r = conv_ip(TRUSTED, "EHLO a\r\nMAIL FROM:<a@@b>\r\nMAIL FROM:a@b.example\r\n"
			     "RCPT TO:<>\r\nRCPT TO:<a@[1.2.3.400]>\r\nRCPT TO:<Postmaster>\r\n"
			     "RCPT TO: <spaced@example.com>\r\nRCPT TO:<x@example.com\r\n");
	ASSERT_CODES(r, "220 250 501 250 501 501 250 250 501");
	CU_ASSERT_TRUE(has(r, "501 5.1.7 "));
	CU_ASSERT_TRUE(has(r, "501 5.1.3 "));
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_BAD_ADDRESS], 4);
}

static void test_address_literals(void)
{
	struct run *r;

	r = conv_ip(STRANGER, "EHLO a\r\nMAIL FROM:<cam@[192.0.2.77]>\r\n"
			      "RCPT TO:<user@[192.0.2.10]>\r\nRCPT TO:<user@[IPv6:2001:db8::1]>\r\n"
			      "DATA\r\nx\r\n.\r\n");
	ASSERT_CODES(r, "220 250 250 250 554 354 250");
	CU_ASSERT_STRING_EQUAL(r->from, "cam@[192.0.2.77]");
	CU_ASSERT_STRING_EQUAL(r->rcpt0, "user@[192.0.2.10]");
	r = conv_ip(TRUSTED, "EHLO a\r\nMAIL FROM:<cam@[192.0.2.77]>\r\n"
			     "RCPT TO:<user@[IPv6:2001:DB8::1]>\r\nDATA\r\nx\r\n.\r\n");
	ASSERT_CODES(r, "220 250 250 250 354 250");
	CU_ASSERT_STRING_EQUAL(r->rcpt0, "user@[IPv6:2001:DB8::1]");
}

/* ---- safety: never an open relay ------------------------------------------------------ */

static void test_no_open_relay(void)
{
	struct run *r;

	r = conv_ip(STRANGER, "EHLO a\r\nMAIL FROM:<spam@spam.example>\r\n"
			      "RCPT TO:<victim@other.com>\r\n"
			      "RCPT TO:<user%other.com@example.com>\r\n"
			      "RCPT TO:<other.com!user@example.com>\r\n"
			      "RCPT TO:<\"user@other.com\"@example.com>\r\n"
			      "RCPT TO:<@example.com:user@other.com>\r\n"
			      "RCPT TO:<@example.com,@relay.example.org:user@other.com>\r\n"
			      "RCPT TO:<user@example.com.other.com>\r\n"
			      "RCPT TO:<user@other.com.>\r\n"
			      "RCPT TO:<user@[203.0.113.50]>\r\n"
			      "RCPT TO:<\"user%other.com\"@example.com>\r\n"
			      "DATA\r\n");
	ASSERT_CODES(r, "220 250 250 554 554 554 554 554 554 554 501 554 554 554");
	CU_ASSERT_TRUE(has(r, "554 5.7.1 Error: relay access denied\r\n"));
	CU_ASSERT_TRUE(has(r, "554 5.5.1 Error: no valid recipients\r\n"));
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_RELAY_DENIED], 9);
	CU_ASSERT_EQUAL(r->begins, 0);

	/* local and relay domains are fine from anyone; routes are dropped, never followed */
	r = conv_ip(STRANGER,
		    "EHLO a\r\nMAIL FROM:<cam@fleet.example>\r\n"
		    "RCPT TO:<@other.com:user@example.com>\r\nRCPT TO:<ops@EXAMPLE.COM>\r\n"
		    "RCPT TO:<x@relay.example.org>\r\nRCPT TO:<postmaster>\r\n"
		    "RCPT TO:<\"first last\"@example.com>\r\nDATA\r\nx\r\n.\r\n");
	ASSERT_CODES(r, "220 250 250 250 250 250 250 250 354 250");
	CU_ASSERT_STRING_EQUAL(r->rcpt0, "user@example.com");
	CU_ASSERT_EQUAL(r->rcpt_count, 5);

	/* a client in allow_networks may relay */
	r = conv_ip(TRUSTED,
		    "EHLO a\r\nMAIL FROM:<cam@fleet.example>\r\n"
		    "RCPT TO:<victim@other.com>\r\nRCPT TO:<user%other.com@example.com>\r\n"
		    "DATA\r\nx\r\n.\r\n");
	ASSERT_CODES(r, "220 250 250 250 250 354 250");
}

/* ---- safety: SMTP smuggling ---------------------------------------------------------- */

static const char *const smuggle_payloads[] = {
	"\n.\n",   "\r.\r", "\r\n.\n",	   "\n.\r\n",	  "\r.\r\n",
	"\r\n.\r", "\n.\r", "\r\n.\r\r\n", "\r\n.\n\r\n", "\n\n.\n\n",
};

static void test_smuggling_rejected(void)
{
	static struct smtp_server_conf c;
	struct opts o = {.conf = &c, .ip = TRUSTED};
	char in[1024];

	c = base_conf();
	for (size_t i = 0; i < sizeof(smuggle_payloads) / sizeof(smuggle_payloads[0]); i++) {
		snprintf(in, sizeof(in),
			 EHLO_MAIL_RCPT
			 "DATA\r\nSubject: hi\r\n\r\nhello%s"
			 "MAIL FROM:<evil@other.com>\r\nRCPT TO:<victim@other.com>\r\n"
			 "DATA\r\nsmuggled\r\n\r\n.\r\nQUIT\r\n",
			 smuggle_payloads[i]);
		struct run *r = conv(&o, in);
		ASSERT_CODES(r, "220 250 250 250 354 550 221");
		CU_ASSERT_TRUE(has(r, "550 5.6.2 "));
		CU_ASSERT_EQUAL(r->ends, 0);
		CU_ASSERT_EQUAL(r->aborts, 1);
		CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_BARE_EOL], 1);
		CU_ASSERT_EQUAL(r->st.commands[SMTP_VERB_MAIL], 1);
	}
}

static void test_smuggling_normalised(void)
{
	static struct smtp_server_conf c;
	struct opts o = {.conf = &c, .ip = TRUSTED};
	char in[1024];

	c = base_conf();
	c.bare_eol = SMTP_BARE_EOL_NORMALISE;
	for (size_t i = 0; i < sizeof(smuggle_payloads) / sizeof(smuggle_payloads[0]); i++) {
		snprintf(in, sizeof(in),
			 EHLO_MAIL_RCPT "DATA\r\nhello%sMAIL FROM:<evil@other.com>\r\n"
					"\r\n.\r\nQUIT\r\n",
			 smuggle_payloads[i]);
		struct run *r = conv(&o, in);
		ASSERT_CODES(r, "220 250 250 250 354 250 221");
		CU_ASSERT_EQUAL(r->ends, 1);
		CU_ASSERT_EQUAL(r->st.commands[SMTP_VERB_MAIL], 1);
		CU_ASSERT_PTR_NOT_NULL(strstr(r->msg, "MAIL FROM:<evil@other.com>\r\n"));
		/* only CRLF line ends come out */
		for (size_t k = 0; k < r->msg_len; k++) {
			if (r->msg[k] == '\n')
				CU_ASSERT_TRUE(k > 0 && r->msg[k - 1] == '\r');
			if (r->msg[k] == '\r')
				CU_ASSERT_TRUE(k + 1 < r->msg_len && r->msg[k + 1] == '\n');
		}
	}
	/* normalised content: bare LF line with a leading dot is not unstuffed */
	struct run *r = conv(&o, EHLO_MAIL_RCPT "DATA\r\na\n.b\nc\rd\r\n.\r\n");
	ASSERT_CODES(r, "220 250 250 250 354 250");
	CU_ASSERT_PTR_NOT_NULL(strstr(r->msg, "\r\na\r\n.b\r\nc\r\nd\r\n"));
}

/* ---- safety: STARTTLS injection ------------------------------------------------------- */

static void test_starttls_injection(void)
{
	static struct run r;
	struct smtp_server_conf c = base_conf();
	struct opts o = {.conf = &c, .ip = STRANGER};
	const char *inj =
		"EHLO a\r\nSTARTTLS\r\nMAIL FROM:<x@evil.example>\r\nRCPT TO:<v@other.com>\r\n";

	run_start(&r, &o, COMMIT_SYNC);
	r.auto_tls = false;
	size_t k = smtp_session_input(r.s, (const uint8_t *)inj, strlen(inj));
	CU_ASSERT_EQUAL(k, strlen(inj));
	ASSERT_CODES(&r, "220 250 220");
	CU_ASSERT_TRUE(has(&r, "250-STARTTLS\r\n"));
	CU_ASSERT_TRUE(strstr(r.out, "220 2.0.0 Ready to start TLS\r\n") + 30 == r.out + r.out_len);
	CU_ASSERT_EQUAL(r.starttls, 1);
	CU_ASSERT_EQUAL(r.st.starttls_discarded,
			strlen("MAIL FROM:<x@evil.example>\r\nRCPT TO:<v@other.com>\r\n"));
	/* more plaintext before the handshake is done: discarded too */
	smtp_session_input(r.s, (const uint8_t *)"NOOP\r\n", 6);
	CU_ASSERT_EQUAL(r.st.starttls_discarded,
			strlen("MAIL FROM:<x@evil.example>\r\nRCPT TO:<v@other.com>\r\n") + 6);
	ASSERT_CODES(&r, "220 250 220");
	smtp_session_tls_started(r.s, "TLSv1.3", "TLS_AES_128_GCM_SHA256");
	/* RFC 3207 4.2: the EHLO state is forgotten */
	feed_s(&r, "MAIL FROM:<a@b.example>\r\nEHLO a\r\nSTARTTLS\r\n");
	ASSERT_CODES(&r, "220 250 220 503 250 503");
	CU_ASSERT_TRUE(has(&r, "250-AUTH PLAIN LOGIN\r\n"));
	CU_ASSERT_EQUAL(r.st.commands[SMTP_VERB_MAIL], 1);
	run_end(&r);

	/* no certificate: not offered, not accepted */
	c.tls_available = false;
	struct run *rr = conv(&o, "EHLO a\r\nSTARTTLS\r\nSTARTTLS now\r\n");
	ASSERT_CODES(rr, "220 250 454 501");
	CU_ASSERT_FALSE(has(rr, "STARTTLS\r\n250"));
}

/* ---- AUTH ------------------------------------------------------------------------------ */

static void test_auth_needs_tls(void)
{
	struct run *r = conv_ip(STRANGER, "EHLO a\r\nAUTH PLAIN AGRldjEAc2VjcmV0\r\nAUTH LOGIN\r\n"
					  "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@other.com>\r\n");

	ASSERT_CODES(r, "220 250 538 538 250 554");
	CU_ASSERT_TRUE(has(r, "538 5.7.11 "));
	CU_ASSERT_FALSE(has(r, "AUTH PLAIN"));
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_ENCRYPTION_REQUIRED], 2);
}

static void test_auth_over_tls(void)
{
	static struct smtp_server_conf c;
	struct opts o = {.conf = &c, .ip = STRANGER, .implicit_tls = true};
	struct run *r;

	c = base_conf();
	c.listener = SMTP_LISTENER_IMPLICIT_TLS;
	/* PLAIN with initial response; then a stranger may relay */
	r = conv(&o, "EHLO a\r\nAUTH PLAIN AGRldjEAc2VjcmV0\r\nAUTH PLAIN AGRldjEAc2VjcmV0\r\n"
		     "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@other.com>\r\nDATA\r\nx\r\n.\r\n");
	ASSERT_CODES(r, "220 250 235 503 250 250 354 250");
	CU_ASSERT_TRUE(has(r, "250-AUTH PLAIN LOGIN\r\n"));
	CU_ASSERT_FALSE(has(r, "STARTTLS"));
	CU_ASSERT_TRUE(has(r, "235 2.7.0 Authentication successful\r\n"));
	CU_ASSERT_STRING_EQUAL(r->msg,
			       "Received: from a ([203.0.113.9])\r\n"
			       "\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n"
			       "\tby mx.example.net (mxrelay) with ESMTPSA id ABC0001\r\n"
			       "\tfor <x@other.com>; Tue, 14 Nov 2023 22:13:20 +0000\r\nx\r\n");
	CU_ASSERT_EQUAL(r->st.auth_success, 1);
	CU_ASSERT_STRING_EQUAL(r->auth_user, "dev1");
	CU_ASSERT_TRUE(r->env_tls && r->env_auth);

	/* PLAIN without initial response, with authzid */
	r = conv(&o, "EHLO a\r\nAUTH PLAIN\r\nZGV2MQBkZXYxAHNlY3JldA==\r\n");
	ASSERT_CODES(r, "220 250 334 235");
	CU_ASSERT_TRUE(has(r, "334 \r\n"));
	/* LOGIN, both ways */
	r = conv(&o, "EHLO a\r\nAUTH LOGIN\r\nZGV2MQ==\r\nc2VjcmV0\r\n");
	ASSERT_CODES(r, "220 250 334 334 235");
	CU_ASSERT_TRUE(has(r, "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 "));
	r = conv(&o, "EHLO a\r\nAUTH LOGIN ZGV2MQ==\r\nc2VjcmV0\r\n");
	ASSERT_CODES(r, "220 250 334 235");
	/* cancel, bad base64, unknown mechanism, malformed PLAIN, temporary failure */
	r = conv(&o, "EHLO a\r\nAUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n%%%\r\nAUTH CRAM-MD5\r\n"
		     "AUTH PLAIN ZGV2MQ==\r\nAUTH PLAIN AHRlbXBmYWlsAHg=\r\nAUTH\r\n"
		     "HELO a\r\nAUTH PLAIN AGRldjEAc2VjcmV0\r\n");
	ASSERT_CODES(r, "220 250 334 501 334 501 504 501 454 504 250 503");
	CU_ASSERT_TRUE(has(r, "501 5.0.0 Authentication cancelled\r\n"));
	CU_ASSERT_TRUE(has(r, "454 4.7.0 "));
	CU_ASSERT_EQUAL(r->st.auth_failures, 0);
	/* no AUTH in a transaction */
	r = conv(&o, "EHLO a\r\nMAIL FROM:<a@b.example>\r\nAUTH PLAIN AGRldjEAc2VjcmV0\r\n");
	ASSERT_CODES(r, "220 250 250 503");
}

static void test_auth_failures_close(void)
{
	static struct smtp_server_conf c;
	struct opts o = {.conf = &c, .ip = STRANGER, .implicit_tls = true};

	c = base_conf();
	c.listener = SMTP_LISTENER_IMPLICIT_TLS;
	/* dev1 / wrong, three times (PLAIN, LOGIN, PLAIN) */
	struct run *r =
		conv(&o, "EHLO a\r\nAUTH PLAIN AGRldjEAd3Jvbmc=\r\nAUTH LOGIN\r\nZGV2MQ==\r\n"
			 "d3Jvbmc=\r\nAUTH PLAIN AGRldjEAd3Jvbmc=\r\nNOOP\r\n");
	ASSERT_CODES(r, "220 250 535 334 334 535 535 421");
	CU_ASSERT_TRUE(has(r, "535 5.7.8 "));
	CU_ASSERT_TRUE(
		has(r, "421 4.7.0 mx.example.net Error: too many authentication failures\r\n"));
	CU_ASSERT_EQUAL(r->closes, 1);
	CU_ASSERT_EQUAL(r->st.auth_failures, 3);
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_AUTH_FAILED], 3);
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_AUTH_TOO_MANY], 1);
	CU_ASSERT_EQUAL(r->st.commands[SMTP_VERB_NOOP], 0);
}

static void test_submission(void)
{
	static struct run rr;
	struct smtp_server_conf c = base_conf();
	struct opts o = {.conf = &c, .ip = TRUSTED};

	c.listener = SMTP_LISTENER_SUBMISSION;
	/* even a trusted network must AUTH on submission; AUTH needs TLS first */
	struct run *r =
		conv(&o, "EHLO a\r\nMAIL FROM:<a@b.example>\r\nAUTH PLAIN AGRldjEAc2VjcmV0\r\n");
	ASSERT_CODES(r, "220 250 530 538");
	CU_ASSERT_TRUE(has(r, "530 5.7.0 "));
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_AUTH_REQUIRED], 1);

	run_start(&rr, &o, COMMIT_SYNC);
	feed_s(&rr, "EHLO a\r\nSTARTTLS\r\n");
	CU_ASSERT_EQUAL(rr.starttls, 1);
	const char *after =
		"EHLO a\r\nMAIL FROM:<a@b.example>\r\nAUTH PLAIN AGRldjEAc2VjcmV0\r\n"
		"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@other.com>\r\nDATA\r\nx\r\n.\r\n";
	feed(&rr, after, strlen(after), 1);
	ASSERT_CODES(&rr, "220 250 220 250 530 235 250 250 354 250");
	CU_ASSERT_PTR_NOT_NULL(strstr(rr.msg, "with ESMTPSA"));
	run_end(&rr);
}

/* ---- BDAT (RFC 3030) ---------------------------------------------------------------------- */

static void test_bdat(void)
{
	struct run *r;
	char want[1024];

	r = conv_ip(TRUSTED, EHLO_MAIL_RCPT "BDAT 5\r\nhelloBDAT 8 LAST\r\n world\r\nQUIT\r\n");
	ASSERT_CODES(r, "220 250 250 250 250 250 221");
	CU_ASSERT_TRUE(has(r, "250 2.0.0 Ok: 5 octets\r\n250 2.0.0 Ok: queued as Q1\r\n"));
	snprintf(want, sizeof(want), "%shello world\r\n", received_plain);
	CU_ASSERT_STRING_EQUAL(r->msg, want);
	CU_ASSERT_EQUAL(r->st.commands[SMTP_VERB_BDAT], 2);

	/* CRLF split across chunks; dots are data; a missing final CRLF is added */
	r = conv_ip(TRUSTED,
		    EHLO_MAIL_RCPT "BDAT 7\r\n.line1\rBDAT 4\r\n\n.\r\nBDAT 1\r\nXBDAT 0 LAST\r\n");
	ASSERT_CODES(r, "220 250 250 250 250 250 250 250");
	snprintf(want, sizeof(want), "%s.line1\r\n.\r\nX\r\n", received_plain);
	CU_ASSERT_STRING_EQUAL(r->msg, want);

	/* BDAT 0 LAST alone: an empty message */
	r = conv_ip(TRUSTED, EHLO_MAIL_RCPT "BDAT 0 LAST\r\n");
	ASSERT_CODES(r, "220 250 250 250 250");
	CU_ASSERT_STRING_EQUAL(r->msg, received_plain);

	/* DATA after BDAT is refused; the BDAT transaction goes on */
	r = conv_ip(TRUSTED, EHLO_MAIL_RCPT "BDAT 4\r\nab\r\nDATA\r\nBDAT 0 last\r\n");
	ASSERT_CODES(r, "220 250 250 250 250 503 250");
	CU_ASSERT_TRUE(has(r, "503 5.5.1 Error: DATA after BDAT\r\n"));
	r = conv_ip(TRUSTED, EHLO_MAIL_RCPT "BDAT 4\r\nab\r\nDATA\r\nRCPT TO:<b@example.com>\r\n"
					    "BDAT 0 LAST\r\n");
	ASSERT_CODES(r, "220 250 250 250 250 503 503 250");
	CU_ASSERT_EQUAL(r->ends, 1);

	/* without a transaction the chunk is still consumed and never executed */
	r = conv_ip(TRUSTED, "EHLO a\r\nBDAT 31\r\nMAIL FROM:<x@y.example>\r\nQUIT\r\nNOOP\r\n"
			     "MAIL FROM:<a@b.example>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
	ASSERT_CODES(r, "220 250 503 250 250 503 250");
	CU_ASSERT_TRUE(has(r, "503 5.5.1 Error: need MAIL command\r\n"));
	CU_ASSERT_TRUE(has(r, "503 5.5.1 Error: need RCPT command\r\n"));
	CU_ASSERT_EQUAL(r->st.commands[SMTP_VERB_QUIT], 0);
	CU_ASSERT_EQUAL(r->begins, 0);

	/* bad syntax consumes nothing */
	r = conv_ip(TRUSTED, EHLO_MAIL_RCPT "BDAT\r\nBDAT x\r\nBDAT 5 FIRST\r\nBDAT -1\r\n"
					    "BDAT 99999999999999999999999\r\nNOOP\r\n");
	ASSERT_CODES(r, "220 250 250 250 501 501 501 501 501 250");

	/* a bare LF in a chunk: the transaction fails at the chunk's end */
	r = conv_ip(TRUSTED, EHLO_MAIL_RCPT "BDAT 4\r\na\nbcBDAT 3 LAST\r\nxyzNOOP\r\n");
	ASSERT_CODES(r, "220 250 250 250 550 503 250");
	CU_ASSERT_EQUAL(r->aborts, 1);
	CU_ASSERT_EQUAL(r->ends, 0);
}

/* ---- limits ---------------------------------------------------------------------------- */

static void test_command_line_limit(void)
{
	char in[2048];
	struct run *r;

	/* 510 + CRLF = 512: long but legal */
	memset(in, 'A', 510);
	memcpy(in + 510, "\r\nNOOP\r\n", 9);
	r = conv_ip(TRUSTED, in);
	ASSERT_CODES(r, "220 500 250");
	CU_ASSERT_TRUE(has(r, "500 5.5.2 Error: command not recognized\r\n"));
	/* 511 + CRLF = 513 */
	memset(in, 'A', 511);
	memcpy(in + 511, "\r\nNOOP\r\n", 9);
	r = conv_ip(TRUSTED, in);
	ASSERT_CODES(r, "220 500 250");
	CU_ASSERT_TRUE(has(r, "500 5.5.2 Error: line too long\r\n"));
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_LINE_TOO_LONG], 1);
	/* a very long line is consumed without being kept */
	memset(in, 'M', 2000);
	memcpy(in + 2000, "\nNOOP\n", 7);
	r = conv_ip(TRUSTED, in);
	ASSERT_CODES(r, "220 500 250");
}

static void test_text_line_limit(void)
{
	static struct smtp_server_conf c;
	struct opts o = {.conf = &c, .ip = TRUSTED};
	static char in[4096];
	size_t n;
	struct run *r;

	c = base_conf();
	for (int len = 998; len <= 999; len++) {
		n = (size_t)snprintf(in, sizeof(in), EHLO_MAIL_RCPT "DATA\r\n");
		memset(in + n, 'x', (size_t)len);
		n += (size_t)len;
		n += (size_t)snprintf(in + n, sizeof(in) - n, "\r\n.\r\n");
		r = conv_n(&o, in, n);
		ASSERT_CODES(r, len == 998 ? "220 250 250 250 354 250" : "220 250 250 250 354 550");
		if (len == 999) {
			CU_ASSERT_TRUE(has(r, "550 5.5.2 "));
			CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_TEXT_LINE_TOO_LONG], 1);
			CU_ASSERT_EQUAL(r->aborts, 1);
		}
	}
	/* a stuffed dot counts: it is on the wire */
	n = (size_t)snprintf(in, sizeof(in), EHLO_MAIL_RCPT "DATA\r\n.");
	memset(in + n, 'x', 998);
	n += 998;
	n += (size_t)snprintf(in + n, sizeof(in) - n, "\r\n.\r\n");
	r = conv_n(&o, in, n);
	ASSERT_CODES(r, "220 250 250 250 354 550");
	c.long_line = SMTP_LONG_LINE_ALLOW;
	r = conv_n(&o, in, n);
	ASSERT_CODES(r, "220 250 250 250 354 250");
}

static void test_message_size_limit(void)
{
	static struct smtp_server_conf c;
	struct opts o = {.conf = &c, .ip = TRUSTED};
	static char in[8192];
	size_t n;
	struct run *r;

	c = base_conf();
	c.max_message_size = 1000;
	r = conv(&o, "EHLO a\r\nMAIL FROM:<a@b.example> SIZE=1001\r\nMAIL FROM:<a@b.example> "
		     "SIZE=1000\r\n");
	ASSERT_CODES(r, "220 250 552 250");
	CU_ASSERT_TRUE(has(r, "250-SIZE 1000\r\n"));
	/* exactly 1000 octets of content: 100 lines of 8 + CRLF */
	for (int big = 0; big <= 1; big++) {
		n = (size_t)snprintf(in, sizeof(in), EHLO_MAIL_RCPT "DATA\r\n");
		for (int i = 0; i < 100 + big; i++)
			n += (size_t)snprintf(in + n, sizeof(in) - n, "%08d\r\n", i);
		n += (size_t)snprintf(in + n, sizeof(in) - n, ".\r\nQUIT\r\n");
		r = conv_n(&o, in, n);
		ASSERT_CODES(r,
			     big ? "220 250 250 250 354 552 221" : "220 250 250 250 354 250 221");
		CU_ASSERT_EQUAL(r->aborts, big ? 1 : 0);
		CU_ASSERT_EQUAL(r->ends, big ? 0 : 1);
		if (big) {
			CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_SIZE_EXCEEDED], 1);
			CU_ASSERT_TRUE(has(r, "552 5.3.4 "));
		} else {
			CU_ASSERT_EQUAL(r->message_size, 1000);
		}
	}
	/* BDAT too: the chunk is consumed, the transaction fails */
	n = (size_t)snprintf(in, sizeof(in), EHLO_MAIL_RCPT "BDAT 1500\r\n");
	for (int i = 0; i < 15; i++) {
		memset(in + n, 'z', 98);
		memcpy(in + n + 98, "\r\n", 2);
		n += 100;
	}
	n += (size_t)snprintf(in + n, sizeof(in) - n, "BDAT 0 LAST\r\nNOOP\r\n");
	r = conv_n(&o, in, n);
	ASSERT_CODES(r, "220 250 250 250 552 503 250");
}

static void test_recipient_limit(void)
{
	static char in[8192];
	size_t n = (size_t)snprintf(in, sizeof(in), "EHLO a\r\nMAIL FROM:<a@b.example>\r\n");
	char want[2048] = "220 250 250";

	for (int i = 0; i < 102; i++) {
		n += (size_t)snprintf(in + n, sizeof(in) - n, "RCPT TO:<r%d@example.com>\r\n", i);
		strcat(want, i < 100 ? " 250" : " 452");
	}
	struct run *r = conv_ip(TRUSTED, in);
	ASSERT_CODES(r, want);
	CU_ASSERT_TRUE(has(r, "452 4.5.3 Error: too many recipients\r\n"));
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_TOO_MANY_RCPTS], 2);
}

static void test_error_limit(void)
{
	static struct smtp_server_conf c;
	struct opts o = {.conf = &c, .ip = STRANGER};

	c = base_conf();
	c.max_errors = 5;
	struct run *r = conv(&o, "EHLO a\r\nX1\r\nX2\r\nNOOP\r\nX3\r\nRCPT TO:<a@b.c>\r\nX5\r\n"
				 "NOOP\r\nX6\r\n");
	ASSERT_CODES(r, "220 250 500 500 250 500 503 500 421");
	CU_ASSERT_TRUE(has(r, "421 4.7.0 mx.example.net Error: too many errors\r\n"));
	CU_ASSERT_EQUAL(r->closes, 1);
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_TOO_MANY_ERRORS], 1);
	CU_ASSERT_EQUAL(r->st.replies_4xx, 1);
	CU_ASSERT_EQUAL(r->st.replies_5xx, 5);
}

/* ---- async commit, overload, timeouts ---------------------------------------------------- */

static void test_async_commit(void)
{
	static struct run r;
	struct smtp_server_conf c = base_conf();
	struct opts o = {.conf = &c, .ip = TRUSTED};
	const char *in = EHLO_MAIL_RCPT "DATA\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n";

	run_start(&r, &o, COMMIT_MANUAL);
	CU_ASSERT_EQUAL(smtp_session_input(r.s, (const uint8_t *)in, strlen(in)), strlen(in));
	CU_ASSERT_EQUAL(r.ends, 1);
	ASSERT_CODES(&r, "220 250 250 250 354");
	CU_ASSERT_FALSE(smtp_session_is_closed(r.s));
	CU_ASSERT_EQUAL(smtp_session_deadline(r.s), UINT64_MAX);
	CU_ASSERT_TRUE(smtp_session_want_input(r.s));
	smtp_session_message_done(r.s, 0, "7F3A21B0");
	ASSERT_CODES(&r, "220 250 250 250 354 250 250 221");
	CU_ASSERT_TRUE(has(&r, "250 2.0.0 Ok: queued as 7F3A21B0\r\n250 2.0.0 Ok\r\n221 "));
	CU_ASSERT_TRUE(smtp_session_is_closed(r.s));
	CU_ASSERT_EQUAL(r.st.messages_accepted, 1);
	/* a stray completion changes nothing */
	size_t before = r.out_len;
	smtp_session_message_done(r.s, 0, "X");
	CU_ASSERT_EQUAL(r.out_len, before);
	run_end(&r);

	/* spool failures */
	in = EHLO_MAIL_RCPT "DATA\r\nbody\r\n.\r\nRSET\r\n";
	run_start(&r, &o, COMMIT_MANUAL);
	smtp_session_input(r.s, (const uint8_t *)in, strlen(in));
	smtp_session_message_done(r.s, -EIO, "disk error");
	CU_ASSERT_TRUE(
		has(&r, "451 4.3.0 Error: queue file write error: disk error\r\n250 2.0.0 Ok"));
	run_end(&r);
	run_start(&r, &o, COMMIT_MANUAL);
	smtp_session_input(r.s, (const uint8_t *)in, strlen(in));
	smtp_session_message_done(r.s, -ENOSPC, NULL);
	CU_ASSERT_TRUE(has(&r, "452 4.3.1 Insufficient system storage\r\n250 2.0.0 Ok"));
	CU_ASSERT_EQUAL(r.st.rejects[SMTP_REJ_COMMIT_FAILED], 1);
	CU_ASSERT_EQUAL(r.st.messages_accepted, 0);
	run_end(&r);
}

static void test_pending_input_bound(void)
{
	static struct run r;
	static char in[8192];
	struct smtp_server_conf c = base_conf();
	struct opts o = {.conf = &c, .ip = TRUSTED};
	size_t n = (size_t)snprintf(in, sizeof(in), EHLO_MAIL_RCPT "DATA\r\nbody\r\n.\r\n");
	size_t head = n;

	c.max_pending_input = 512;
	for (int i = 0; i < 300; i++)
		n += (size_t)snprintf(in + n, sizeof(in) - n, "NOOP\r\n");
	run_start(&r, &o, COMMIT_MANUAL);
	size_t k = smtp_session_input(r.s, (const uint8_t *)in, n);
	CU_ASSERT_EQUAL(k, head + 512);
	CU_ASSERT_FALSE(smtp_session_want_input(r.s));
	CU_ASSERT_EQUAL(r.st.pending_input_full, 1);
	CU_ASSERT_EQUAL(smtp_session_input(r.s, (const uint8_t *)in + k, n - k), 0);
	smtp_session_message_done(r.s, 0, "Q9");
	CU_ASSERT_TRUE(smtp_session_want_input(r.s));
	k += smtp_session_input(r.s, (const uint8_t *)in + k, n - k);
	CU_ASSERT_EQUAL(k, n);
	CU_ASSERT_EQUAL(r.st.commands[SMTP_VERB_NOOP], 300);
	CU_ASSERT_EQUAL(r.st.bytes_in, n);
	run_end(&r);

	/* the whole conversation is still segmentation invariant */
	struct run *rr = conv_n(&o, in, n);
	CU_ASSERT_EQUAL(rr->st.commands[SMTP_VERB_NOOP], 300);
}

static void test_overload(void)
{
	char buf[128];

	g_overloaded = true;
	struct run *r = conv_ip(TRUSTED,
				"EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<a@example.com>\r\n");
	g_overloaded = false;
	ASSERT_CODES(r, "220 250 451 503");
	CU_ASSERT_TRUE(has(r, "451 4.3.1 Insufficient system resources"));
	CU_ASSERT_EQUAL(r->st.rejects[SMTP_REJ_OVERLOAD], 1);
	const char *busy = "421 4.3.2 mx.example.net Service not available, closing channel\r\n";
	CU_ASSERT_EQUAL(smtp_server_format_busy_greeting(buf, sizeof(buf), "mx.example.net"),
			(int)strlen(busy));
	CU_ASSERT_STRING_EQUAL(buf, busy);
	CU_ASSERT_EQUAL(smtp_server_format_busy_greeting(buf, 20, "mx.example.net"), -ENOSPC);
}

static void test_timeouts(void)
{
	static struct run r;
	struct smtp_server_conf c = base_conf();
	struct opts o = {.conf = &c, .ip = TRUSTED};

	c.timeout_command_us = 300000000;
	c.timeout_data_us = 180000000;
	g_now = 1000000;
	run_start(&r, &o, COMMIT_SYNC);
	CU_ASSERT_EQUAL(smtp_session_deadline(r.s), 1000000 + 300000000ull);
	g_now = 2000000;
	feed_s(&r, EHLO_MAIL_RCPT "DATA\r\npartial");
	CU_ASSERT_EQUAL(smtp_session_deadline(r.s), 2000000 + 180000000ull);
	smtp_session_timeout(r.s);
	CU_ASSERT_TRUE(has(&r, "421 4.4.2 mx.example.net Error: timeout exceeded\r\n"));
	CU_ASSERT_TRUE(smtp_session_is_closed(r.s));
	CU_ASSERT_EQUAL(r.aborts, 1);
	CU_ASSERT_EQUAL(r.closes, 1);
	CU_ASSERT_EQUAL(r.st.timeouts, 1);
	CU_ASSERT_EQUAL(smtp_session_deadline(r.s), UINT64_MAX);
	CU_ASSERT_FALSE(smtp_session_want_input(r.s));
	run_end(&r);
	g_now = 5000000;

	/* the peer goes away in the middle of DATA; freeing later aborts nothing twice */
	run_start(&r, &o, COMMIT_SYNC);
	feed_s(&r, EHLO_MAIL_RCPT "DATA\r\npartial");
	smtp_session_peer_closed(r.s);
	CU_ASSERT_EQUAL(r.aborts, 1);
	run_end(&r);
	CU_ASSERT_EQUAL(r.aborts, 1);
	/* freed in the middle of BDAT */
	run_start(&r, &o, COMMIT_SYNC);
	feed_s(&r, EHLO_MAIL_RCPT "BDAT 100\r\npartial");
	CU_ASSERT_EQUAL(r.begins, 1);
	run_end(&r);
	CU_ASSERT_EQUAL(r.aborts, 1);
}

static void test_rset_aborts_bdat(void)
{
	struct run *r = conv_ip(TRUSTED, EHLO_MAIL_RCPT
				"BDAT 3\r\nabcRSET\r\nEHLO b\r\n"
				"MAIL FROM:<a@b.example>\r\nRCPT TO:<a@example.com>\r\n"
				"BDAT 2\r\nxyEHLO c\r\n");
	ASSERT_CODES(r, "220 250 250 250 250 250 250 250 250 250 250");
	CU_ASSERT_EQUAL(r->begins, 2);
	CU_ASSERT_EQUAL(r->aborts, 2);
	CU_ASSERT_EQUAL(r->ends, 0);
	CU_ASSERT_EQUAL(r->st.messages_aborted, 2);
}

static void test_conf_check(void)
{
	struct smtp_server_conf c;
	struct smtp_server_stats st = {0};
	struct smtp_session *s = NULL;
	char err[128];

	smtp_server_conf_defaults(&c);
	CU_ASSERT_EQUAL(smtp_server_conf_check(&c, err, sizeof(err)), 0);
	CU_ASSERT_EQUAL(c.max_recipients, 100);
	CU_ASSERT_EQUAL(c.max_command_line, 512);
	CU_ASSERT_EQUAL(c.max_text_line, 1000);
	CU_ASSERT_EQUAL(c.timeout_command_us, 300000000ull);
	CU_ASSERT_EQUAL(c.timeout_data_us, 180000000ull);
	c.max_recipients = 99;
	CU_ASSERT_EQUAL(smtp_server_conf_check(&c, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "max_recipients"));
	CU_ASSERT_EQUAL(smtp_session_new(&c, &test_cb, NULL, &st, 0, 0, &s), -EINVAL);
	CU_ASSERT_PTR_NULL(s);
	smtp_server_conf_defaults(&c);
	c.max_command_line = 511;
	CU_ASSERT_EQUAL(smtp_server_conf_check(&c, err, sizeof(err)), -EINVAL);
	smtp_server_conf_defaults(&c);
	c.hostname = "bad host";
	CU_ASSERT_EQUAL(smtp_server_conf_check(&c, err, sizeof(err)), -EINVAL);
	smtp_server_conf_defaults(&c);
	c.max_text_line = 999;
	CU_ASSERT_EQUAL(smtp_server_conf_check(&c, err, sizeof(err)), -EINVAL);
	CU_ASSERT_STRING_EQUAL(smtp_verb_name(SMTP_VERB_STARTTLS), "STARTTLS");
	CU_ASSERT_STRING_EQUAL(smtp_reject_name(SMTP_REJ_BARE_EOL), "bare_eol");
	for (int i = 0; i < SMTP_REJ_COUNT; i++)
		CU_ASSERT_PTR_NOT_NULL(smtp_reject_name((enum smtp_reject)i));
}

/* Random byte soup never breaks the reply format or the invariance. */
static void test_random_input(void)
{
	static struct smtp_server_conf c;
	struct opts o = {.conf = &c, .ip = TRUSTED};
	static const char *const words[] = {
		"EHLO a\r\n",
		"MAIL FROM:<a@b.example>\r\n",
		"RCPT TO:<c@example.com>\r\n",
		"DATA\r\n",
		"\r\n.\r\n",
		".",
		"\n",
		"\r",
		"x",
		"BDAT 3\r\n",
		"BDAT 0 LAST\r\n",
		"RSET\r\n",
		"NOOP\r\n",
		"AUTH PLAIN\r\n",
		"STARTTLS\r\n",
		"HELO b\r\n",
	};
	static char in[4096];

	c = base_conf();
	c.max_errors = 1000;
	rng_state = 12345;
	for (int t = 0; t < 40; t++) {
		size_t n = 0;
		int count = 5 + (int)(rng() % 60);
		for (int i = 0; i < count; i++) {
			const char *w = words[rng() % (sizeof(words) / sizeof(words[0]))];
			size_t l = strlen(w);
			if (n + l >= sizeof(in))
				break;
			memcpy(in + n, w, l);
			n += l;
		}
		uint32_t saved = rng_state;
		/* STARTTLS is not segmentation invariant by design (injection) */
		struct run *r;
		if (memmem(in, n, "STARTTLS", 8)) {
			o.implicit_tls = true;
			c.listener = SMTP_LISTENER_IMPLICIT_TLS;
		} else {
			o.implicit_tls = false;
			c.listener = SMTP_LISTENER_RELAY;
		}
		r = conv_n(&o, in, n);
		CU_ASSERT_EQUAL(r->ends, (int)r->st.messages_accepted);
		rng_state = saved;
	}
}

/* The reply paths not covered elsewhere. */
static void test_other_reply_paths(void)
{
	static struct smtp_server_conf c;
	struct opts o = {.conf = &c, .ip = TRUSTED, .implicit_tls = true};
	struct run *r;

	r = conv_ip(TRUSTED,
		    "EHLO a\r\nMAIL TO:<a@b.example>\r\nMAIL FROM:<a@b.example> AUTH=x+zz\r\n"
		    "MAIL FROM:<a@b.example> AUTH=<>\r\nRCPT FROM:<a@example.com>\r\n"
		    "RCPT TO:<\xc3@example.com>\r\nRCPT TO:<a@example.com> FOO\r\n");
	ASSERT_CODES(r, "220 250 501 501 250 501 501 555");
	CU_ASSERT_TRUE(has(r, "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"));
	CU_ASSERT_TRUE(has(r, "501 5.5.4 Error: bad AUTH parameter\r\n"));
	CU_ASSERT_TRUE(has(r, "501 5.5.4 Syntax: RCPT TO:<address>\r\n"));
	CU_ASSERT_TRUE(has(r, "501 5.1.3 Error: invalid UTF-8 in recipient address\r\n"));

	c = base_conf();
	c.listener = SMTP_LISTENER_IMPLICIT_TLS;
	/* NUL inside a LOGIN password or user name; an over-long user name */
	r = conv(
		&o,
		"EHLO a\r\nAUTH LOGIN\r\nZGV2MQ==\r\nAA==\r\nAUTH LOGIN AA==\r\n"
		"AUTH LOGIN\r\nAGE=\r\nAUTH PLAIN AGRldjEAc2VjcmV0AA==\r\nAUTH PLAIN AGRldjE=\r\n");
	ASSERT_CODES(r, "220 250 334 334 501 501 334 501 501 501");
	CU_ASSERT_TRUE(has(r, "501 5.5.2 Error: invalid response\r\n"));
	CU_ASSERT_TRUE(has(r, "501 5.5.2 Error: invalid user name\r\n"));
	CU_ASSERT_TRUE(has(r, "501 5.5.2 Error: invalid PLAIN response\r\n"));
	CU_ASSERT_EQUAL(r->st.auth_failures, 0);
	/* a line too long inside an AUTH exchange ends the exchange */
	static char in[1024];
	size_t n = (size_t)snprintf(in, sizeof(in), "EHLO a\r\nAUTH PLAIN\r\n");
	memset(in + n, 'Q', 600);
	n += 600;
	n += (size_t)snprintf(in + n, sizeof(in) - n, "\r\nNOOP\r\n");
	r = conv_n(&o, in, n);
	ASSERT_CODES(r, "220 250 334 500 250");
}

/* A session on pool's terms; the conversation is fed in one segment. */
static void pooled_run(struct run *r, struct smtp_session_pool *pool,
		       const struct smtp_server_conf *conf, uint32_t ip, const char *in)
{
	memset(r, 0, sizeof(*r));
	r->commit_mode = COMMIT_SYNC;
	r->auto_tls = true;
	int rc = smtp_session_new_pooled(pool, conf, &test_cb, r, &r->st, ip, 0xABC, &r->s);
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	smtp_session_start(r->s);
	feed_s(r, in);
}

/*
 * A session taken from the pool behaves exactly as a fresh one: nothing of
 * the connection before (TLS, AUTH, HELO, trust, recipients, a message in
 * progress, a half line) leaks into the next.  The pool keeps its bound.
 */
static void test_session_pool(void)
{
	static struct run fresh, used, dirty;
	struct smtp_server_conf c = base_conf();
	struct smtp_server_conf big = base_conf();
	struct smtp_session_pool pool;
	const char *plain = "EHLO b\r\nMAIL FROM:<x@y.example>\r\nRCPT TO:<ops@example.com>\r\n"
			    "RCPT TO:<a@relay.example.org>\r\nDATA\r\nSubject: p\r\n\r\nbody\r\n"
			    ".\r\nAUTH PLAIN AGRldjEAc2VjcmV0\r\nQUIT\r\n";

	big.max_command_line = 2048;
	smtp_session_pool_init(&pool, 2);
	/* the reference: a fresh session, untrusted client */
	pooled_run(&fresh, NULL, &c, 0xc0000201u, plain);
	smtp_session_free(fresh.s);
	ASSERT_CODES(&fresh, "220 250 250 250 250 354 250 538 221");

	/* a trusted client over TLS, authenticated, with recipients and a message open,
	 * a half command line pending: then back into the pool */
	pooled_run(&dirty, &pool, &c, TRUSTED, "EHLO a\r\nSTARTTLS\r\n");
	feed_s(&dirty, "EHLO a\r\nAUTH PLAIN AGRldjEAc2VjcmV0\r\n"
		       "MAIL FROM:<a@b.example>\r\nRCPT TO:<1@relay.example.org>\r\n"
		       "RCPT TO:<2@x.example>\r\nRCPT TO:<3@x.example>\r\nRCPT TO:<4@x.example>\r\n"
		       "RCPT TO:<5@x.example>\r\nDATA\r\nSubject: half\r\nNOOP");
	CU_ASSERT_EQUAL(dirty.begins, 1);
	CU_ASSERT_EQUAL(dirty.st.auth_success, 1);
	CU_ASSERT_EQUAL(pool.allocated, 1);
	smtp_session_free_pooled(&pool, dirty.s);
	CU_ASSERT_EQUAL(dirty.aborts, 1); /* the open message is aborted on the way in */
	CU_ASSERT_EQUAL(pool.count, 1);

	/* reused: the same result as the fresh session, byte for byte */
	pooled_run(&used, &pool, &c, 0xc0000201u, plain);
	CU_ASSERT_EQUAL(pool.reused, 1);
	CU_ASSERT_EQUAL(pool.allocated, 1);
	CU_ASSERT_EQUAL(pool.count, 0);
	compare_runs(&fresh, &used, "pooled");
	CU_ASSERT_FALSE(used.env_tls || used.env_auth);
	CU_ASSERT_EQUAL(used.rcpt_count, 2);
	CU_ASSERT_STRING_EQUAL(used.from, "x@y.example");
	CU_ASSERT_STRING_EQUAL(used.auth_user, "");
	CU_ASSERT_EQUAL(used.st.sessions, 1);

	/* a listener with a longer command line does not get the short-line session */
	smtp_session_free_pooled(&pool, used.s);
	CU_ASSERT_EQUAL(pool.count, 1);
	char line[1600];
	int n = snprintf(line, sizeof(line), "EHLO ");
	memset(line + n, 'a', 1400);
	snprintf(line + n + 1400, sizeof(line) - (size_t)n - 1400, "\r\nQUIT\r\n");
	pooled_run(&used, &pool, &big, TRUSTED, line);
	CU_ASSERT_EQUAL(pool.reused, 1);
	CU_ASSERT_EQUAL(pool.allocated, 2);
	CU_ASSERT_EQUAL(pool.count, 0);
	ASSERT_CODES(&used, "220 501 221"); /* a 1400-octet name: too long a domain, not a line */

	/* the bound: three ended sessions, two kept */
	struct smtp_session *s3[3];
	smtp_session_free_pooled(&pool, used.s);
	for (int i = 0; i < 2; i++)
		CU_ASSERT_EQUAL(smtp_session_new_pooled(&pool, &c, &test_cb, &used, &used.st,
							TRUSTED, 1, &s3[i]),
				0);
	CU_ASSERT_EQUAL(
		smtp_session_new_pooled(&pool, &big, &test_cb, &used, &used.st, TRUSTED, 1, &s3[2]),
		0);
	for (int i = 0; i < 3; i++)
		smtp_session_free_pooled(&pool, s3[i]);
	CU_ASSERT_EQUAL(pool.count, 2);
	CU_ASSERT_EQUAL(pool.full, 1);
	/* a bad configuration is refused before the pool is touched */
	struct smtp_server_conf bad = base_conf();
	bad.max_command_line = 10;
	struct smtp_session *none = NULL;
	CU_ASSERT_EQUAL(
		smtp_session_new_pooled(&pool, &bad, &test_cb, &used, &used.st, TRUSTED, 1, &none),
		-EINVAL);
	CU_ASSERT_PTR_NULL(none);
	CU_ASSERT_EQUAL(pool.count, 2);
	smtp_session_pool_drain(&pool);
	CU_ASSERT_EQUAL(pool.count, 0);
	CU_ASSERT_PTR_NULL(pool.head);
}

/*
 * Prewarm fills the pool to its bound (not past it), with sessions every new
 * connection then takes (reused, none allocated) and that behave as fresh
 * ones, a recipient array included; a second prewarm adds nothing.
 */
static void test_session_pool_prewarm(void)
{
	static struct run fresh, warm;
	struct smtp_server_conf c = base_conf();
	struct smtp_server_conf big = base_conf();
	struct smtp_session_pool pool;
	struct smtp_session *s[5];
	const char *plain = "EHLO b\r\nMAIL FROM:<x@y.example>\r\nRCPT TO:<ops@example.com>\r\n"
			    "RCPT TO:<a@relay.example.org>\r\nDATA\r\nSubject: p\r\n\r\nbody\r\n"
			    ".\r\nQUIT\r\n";

	smtp_session_pool_init(&pool, 4);
	CU_ASSERT_EQUAL(smtp_session_pool_prewarm(&pool, &c, 0), 0);
	CU_ASSERT_EQUAL(pool.count, 0);
	CU_ASSERT_EQUAL(smtp_session_pool_prewarm(&pool, &c, 3), 3);
	CU_ASSERT_EQUAL(pool.count, 3);
	CU_ASSERT_EQUAL(smtp_session_pool_prewarm(&pool, &c, 100), 1); /* the bound: 4 */
	CU_ASSERT_EQUAL(pool.count, 4);
	CU_ASSERT_EQUAL(pool.prewarmed, 4);
	CU_ASSERT_EQUAL(smtp_session_pool_prewarm(&pool, &c, 4), 0);
	CU_ASSERT_EQUAL(pool.allocated, 0);
	struct smtp_server_conf bad = base_conf();
	bad.max_command_line = 10;
	CU_ASSERT_EQUAL(smtp_session_pool_prewarm(&pool, &bad, 4), -EINVAL);
	CU_ASSERT_EQUAL(smtp_session_pool_prewarm(NULL, &c, 4), -EINVAL);

	pooled_run(&fresh, NULL, &c, 0xc0000201u, plain);
	smtp_session_free(fresh.s);
	ASSERT_CODES(&fresh, "220 250 250 250 250 354 250 221");
	/* a prewarmed session: taken, not allocated, and the same conversation */
	pooled_run(&warm, &pool, &c, 0xc0000201u, plain);
	CU_ASSERT_EQUAL(pool.reused, 1);
	CU_ASSERT_EQUAL(pool.allocated, 0);
	CU_ASSERT_EQUAL(pool.count, 3);
	compare_runs(&fresh, &warm, "prewarmed");
	CU_ASSERT_EQUAL(warm.rcpt_count, 2);
	smtp_session_free_pooled(&pool, warm.s);
	CU_ASSERT_EQUAL(pool.count, 4);

	/* four connections at once: all from the pool; a fifth is allocated */
	for (int i = 0; i < 5; i++)
		CU_ASSERT_EQUAL(smtp_session_new_pooled(&pool, &c, &test_cb, &warm, &warm.st,
							TRUSTED, 1, &s[i]),
				0);
	CU_ASSERT_EQUAL(pool.reused, 5);
	CU_ASSERT_EQUAL(pool.allocated, 1);
	CU_ASSERT_EQUAL(pool.count, 0);
	for (int i = 0; i < 5; i++)
		smtp_session_free_pooled(&pool, s[i]);
	CU_ASSERT_EQUAL(pool.count, 4);
	CU_ASSERT_EQUAL(pool.full, 1);
	smtp_session_pool_drain(&pool);

	/* sessions prewarmed for a long command line serve a short-line listener too */
	big.max_command_line = 2048;
	CU_ASSERT_EQUAL(smtp_session_pool_prewarm(&pool, &big, 2), 2);
	pooled_run(&warm, &pool, &c, 0xc0000201u, plain);
	CU_ASSERT_EQUAL(pool.allocated, 1);
	compare_runs(&fresh, &warm, "prewarmed, long line");
	smtp_session_free_pooled(&pool, warm.s);
	smtp_session_pool_drain(&pool);
	CU_ASSERT_EQUAL(pool.count, 0);
}

static CU_TestInfo server_tests[] = {
	{"basic transaction", test_basic_transaction},
	{"dot-stuffing and empty message", test_dot_stuffing},
	{"pipelining: one write per drained input", test_pipelining_one_write},
	{"sequence errors, HELO, VRFY, HELP", test_sequence_and_misc},
	{"MAIL/RCPT parameters, SMTPUTF8, DSN", test_mail_rcpt_params},
	{"address literals", test_address_literals},
	{"never an open relay", test_no_open_relay},
	{"smuggling payloads rejected (550 5.6.2)", test_smuggling_rejected},
	{"smuggling payloads normalised", test_smuggling_normalised},
	{"STARTTLS injection discarded", test_starttls_injection},
	{"AUTH refused without TLS", test_auth_needs_tls},
	{"AUTH PLAIN/LOGIN over TLS", test_auth_over_tls},
	{"3 AUTH failures close", test_auth_failures_close},
	{"submission requires AUTH", test_submission},
	{"BDAT", test_bdat},
	{"command line limit", test_command_line_limit},
	{"text line limit", test_text_line_limit},
	{"message size limit", test_message_size_limit},
	{"recipient limit", test_recipient_limit},
	{"error limit", test_error_limit},
	{"async commit", test_async_commit},
	{"pending input bound", test_pending_input_bound},
	{"overload", test_overload},
	{"timeouts and peer close", test_timeouts},
	{"RSET/EHLO abort BDAT", test_rset_aborts_bdat},
	{"configuration check", test_conf_check},
	{"random conversations", test_random_input},
	{"other reply paths", test_other_reply_paths},
	{"session pool: reuse is a fresh session", test_session_pool},
	{"session pool: prewarm fills to the bound, sessions reused", test_session_pool_prewarm},
	CU_TEST_INFO_NULL,
};

int main(void)
{
	static CU_SuiteInfo suites[] = {
		{"smtp_parse", NULL, NULL, NULL, NULL, parse_tests},
		{"smtp_server", NULL, NULL, NULL, NULL, server_tests},
		{"smtp_auth", NULL, NULL, NULL, NULL, auth_tests},
		CU_SUITE_INFO_NULL,
	};
	return mx_test_run(suites);
}

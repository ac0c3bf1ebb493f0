/*
 * fuzz_smtp_client.c - libFuzzer target: the outbound SMTP client
 * (lib/smtp/client.c) against arbitrary server replies.
 *
 * Input layout: byte 0 picks the configuration (TLS policy, AUTH, BDAT chunk
 * size, how many bytes the transport takes per send), byte 1 the number of
 * messages (1..4), both together the transactions allowed in flight (1..4:
 * several when the replies offer PIPELINING and CHUNKING).  Messages are
 * submitted whenever the client takes one (after each segment and event, and
 * from message_done), as the delivery loop does; then
 * repeated [len][len bytes] segments of server replies, where a len byte with
 * the top bit set is an event instead: the handshake finished, a timeout,
 * the transport became writable, QUIT, or the connection dropped.
 *
 * Invariants checked (abort() on violation):
 * - every submitted message is reported exactly once (at the latest when the
 *   client is freed), in the order submitted, with per-recipient counts that
 *   add up;
 * - a recipient is never bounced by a reply the client made up for a lost
 *   session (synthetic 4xx), and every outcome matches its reply's class;
 * - failed/closed at most once, and nothing is sent after them;
 * - send is never offered an empty buffer.
 */
#include "smtp.h"

#include <stdbool.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MSGS 4

struct fz {
	struct smtp_client *c;
	size_t send_limit;
	unsigned nmsgs, submitted, nreported;
	unsigned reported[MAX_MSGS];
	bool dead, quit;
	unsigned ends;
};

static struct smtp_client_msg g_msgs[MAX_MSGS];

static void check(bool ok)
{
	if (!ok)
		abort();
}

static const char g_body[] = "Subject: fuzz\r\n\r\n.one\r\n..\r\n.\r\nbare\nlf\rcr\r\n. x\r\nend";

static long body_read(void *user, uint64_t off, uint8_t *buf, size_t len)
{
	(void)user;
	/* the body repeats; bodies are longer than one BDAT chunk */
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)g_body[(off + i) % (sizeof(g_body) - 1)];
	return len > 300 ? 300 : (long)len;
}

static size_t cb_send(void *user, const uint8_t *p, size_t n)
{
	struct fz *f = user;

	(void)p;
	check(n > 0);
	check(!f->dead);
	return f->send_limit && n > f->send_limit ? f->send_limit : n;
}

static void cb_starttls(void *user)
{
	(void)user;
}

static void submit(struct fz *f)
{
	while (f->submitted < f->nmsgs) {
		int rc = smtp_client_send_message(f->c, &g_msgs[f->submitted]);
		if (rc == -EBUSY)
			return; /* no room now: later */
		if (rc != 0) {
			check(rc == -EPIPE && (f->dead || f->quit || smtp_client_is_dead(f->c)));
			return;
		}
		f->submitted++;
	}
}

static void cb_done(void *user, const struct smtp_client_result *r)
{
	struct fz *f = user;
	size_t k = (size_t)(r->msg - g_msgs);

	check(r->msg >= g_msgs && k < MAX_MSGS && k < f->submitted);
	check(++f->reported[k] == 1);
	check(k == f->nreported++); /* in the order submitted */
	check(r->rcpt_count == r->msg->rcpt_count);
	check(r->delivered + r->deferred + r->bounced == r->rcpt_count);
	for (size_t i = 0; i < r->rcpt_count; i++) {
		const struct smtp_client_rcpt_result *rr = &r->rcpts[i];
		unsigned cls = rr->final.code / 100;
		check(strlen(rr->final.text) == rr->final.text_len);
		if (rr->outcome == SMTP_CLIENT_DELIVERED)
			check(cls == 2);
		else if (rr->outcome == SMTP_CLIENT_BOUNCED)
			check(cls == 5);
		else
			check(cls != 2 && cls != 5);
	}
	submit(f);
}

static void cb_failed(void *user, const struct smtp_reply *why)
{
	struct fz *f = user;

	check(why->code != 0);
	check(++f->ends == 1);
	f->dead = true;
}

static void cb_closed(void *user)
{
	struct fz *f = user;

	check(++f->ends == 1);
	f->dead = true;
}

static const struct smtp_client_cb g_cb = {
	.send = cb_send,
	.starttls = cb_starttls,
	.message_done = cb_done,
	.failed = cb_failed,
	.closed = cb_closed,
};

static const struct smtp_client_rcpt g_rcpts[] = {
	{"a@x.test", SMTP_NOTIFY_FAILURE, "rfc822;a@x.test"},
	{"b@x.test", 0, NULL},
	{"bad address", 0, NULL},
	{"c@x.test", SMTP_NOTIFY_NEVER, NULL},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_client_conf conf;
	struct smtp_client_stats st;
	struct fz f;
	size_t i = 2;

	if (size < 2)
		return 0;
	memset(&f, 0, sizeof(f));
	memset(&st, 0, sizeof(st));
	smtp_client_conf_defaults(&conf);
	conf.helo_name = "client.test";
	conf.tls = (enum smtp_client_tls_policy)(data[0] % 3);
	if (data[0] & 4) {
		conf.auth_user = "user";
		conf.auth_pass = "pass";
		conf.auth_plaintext_ok = (data[0] & 8) != 0;
	}
	conf.bdat_chunk = (data[0] & 16) ? 512 : 4096;
	conf.max_bdat_in_flight = (data[0] & 32) ? 1 : 3;
	conf.max_txns_in_flight = 1 + (unsigned)((data[0] ^ data[1]) % 4);
	f.send_limit = (data[0] & 64) ? 5 : 0;
	f.nmsgs = 1 + data[1] % MAX_MSGS;
	for (unsigned k = 0; k < MAX_MSGS; k++) {
		struct smtp_client_msg *m = &g_msgs[k];
		memset(m, 0, sizeof(*m));
		m->sender = k == 3 ? "" : "dev@fleet.test";
		m->rcpts = g_rcpts + (k % 2);
		m->rcpt_count = 1 + (data[1] >> 2) % (4 - (k % 2));
		m->body_len = (uint64_t)((data[1] >> 4) * 97 + k * 13);
		m->body_8bit = k == 1;
		m->smtputf8 = k == 2 && (data[1] & 0x80);
		m->ret = k ? SMTP_RET_HDRS : SMTP_RET_NONE;
		m->envid = "env+2B1";
		m->body_read = body_read;
	}
	if (smtp_client_new(&conf, &g_cb, &f, &st, &f.c) < 0)
		abort();
	submit(&f);
	smtp_client_start(f.c, (data[0] & 128) != 0);
	while (i < size) {
		uint8_t len = data[i++];
		if (len & 0x80) {
			switch (len & 7) {
			case 0:
				smtp_client_tls_started(f.c);
				break;
			case 1:
				smtp_client_timeout(f.c);
				break;
			case 2:
				f.quit = true;
				smtp_client_quit(f.c);
				break;
			case 3:
				smtp_client_abort(f.c, "peer closed");
				break;
			default:
				smtp_client_writable(f.c);
				break;
			}
			(void)smtp_client_deadline(f.c);
			if (!f.dead)
				submit(&f);
			continue;
		}
		if (len > size - i)
			len = (uint8_t)(size - i);
		(void)smtp_client_input(f.c, data + i, len);
		if (f.send_limit)
			for (int k = 0; k < 64 && !f.dead; k++)
				smtp_client_writable(f.c);
		if (!f.dead)
			submit(&f);
		i += len;
	}
	smtp_client_free(f.c);
	for (unsigned k = 0; k < f.submitted; k++)
		check(f.reported[k] == 1);
	check(st.messages_sent <= f.submitted);
	return 0;
}

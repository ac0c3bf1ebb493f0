/*
 * fuzz_smtp_server.c - libFuzzer target: one SMTP server session over
 * arbitrary input, split at fuzzer-chosen points.
 *
 * Input layout: byte 0 picks the configuration (listener kind, bare-LF
 * policy, commit answered inside message_end or later, commit failures);
 * then repeated [len][len bytes] segments, where a len byte with the top bit
 * set also asks for the pending commit to complete or a timeout.
 *
 * Invariants checked (abort() on violation):
 * - every send is whole reply lines "ddd[ -]x.y.z text\r\n" whose enhanced
 *   code class matches the reply class; only the greeting, EHLO/HELO lines
 *   and 3xx intermediate replies (334, 354: RFC 3463 has no class 3) go
 *   without an enhanced code;
 * - "250 ... queued as" is never said without message_end having been
 *   called and the commit reported successful;
 * - message_data only between message_begin and message_end/abort, starting
 *   with our Received: header; no callbacks after close; close at most once;
 * - nothing is sent between cb->starttls and the handshake (CVE-2011-0411);
 * - the session never takes more input than offered.
 */
#include "smtp.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct fz {
	struct smtp_session *s;
	bool msg_open, commit_pending, closed, first_line_seen, tls_pending, sync_commit;
	bool fail_commits, first_data;
	unsigned queued_allowed;
	unsigned queued_seen;
};

static void check(bool ok)
{
	if (!ok)
		abort();
}

static bool is_digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

/* "d.ddd.ddd " at p; returns its length or 0 */
static size_t enhanced_code(const uint8_t *p, size_t n)
{
	size_t i = 0;

	for (int part = 0; part < 3; part++) {
		size_t d = 0;
		while (i < n && is_digit(p[i]) && d < 4) {
			i++;
			d++;
		}
		if (d == 0 || d > (part == 0 ? 1u : 3u))
			return 0;
		if (part < 2) {
			if (i >= n || p[i] != '.')
				return 0;
			i++;
		}
	}
	return i < n && p[i] == ' ' ? i : 0;
}

static void check_line(struct fz *f, const uint8_t *p, size_t n)
{
	check(n >= 4);
	check(p[0] >= '2' && p[0] <= '5' && is_digit(p[1]) && is_digit(p[2]));
	check(p[3] == ' ' || p[3] == '-');
	for (size_t i = 0; i < n; i++)
		check(p[i] >= 32 && p[i] < 127);
	size_t ec = enhanced_code(p + 4, n - 4);
	if (ec) {
		check(p[4] == p[0]);
	} else {
		bool greeting = !f->first_line_seen && memcmp(p, "220 ", 4) == 0;
		bool ehlo = memcmp(p, "250", 3) == 0;
		bool intermediate = p[0] == '3'; /* 334 challenge, 354: no class 3 codes */
		check(greeting || ehlo || intermediate);
	}
	f->first_line_seen = true;
	if (n > 20 && memmem(p, n, "Ok: queued as", 13)) {
		f->queued_seen++;
		check(f->queued_seen <= f->queued_allowed);
	}
}

static void cb_send(void *user, const uint8_t *p, size_t n)
{
	struct fz *f = user;
	size_t start = 0;

	check(!f->closed);
	/* CVE-2011-0411: nothing is answered between STARTTLS's 220 and the handshake */
	check(!f->tls_pending);
	check(n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n');
	for (size_t i = 0; i + 1 < n; i++) {
		if (p[i] == '\r' && p[i + 1] == '\n') {
			check_line(f, p + start, i - start);
			start = i + 2;
			i++;
		}
	}
	check(start == n);
}

static void cb_close(void *user)
{
	struct fz *f = user;
	check(!f->closed);
	f->closed = true;
}

static void cb_starttls(void *user)
{
	struct fz *f = user;
	check(!f->closed);
	f->tls_pending = true;
}

static int cb_auth(void *user, const char *authzid, const char *authcid, const char *pass)
{
	(void)user;
	(void)authzid;
	check(authcid != NULL && pass != NULL);
	return strcmp(authcid, "u") == 0 && strcmp(pass, "p") == 0 ? 0 : -EACCES;
}

static void cb_begin(void *user)
{
	struct fz *f = user;
	check(!f->closed && !f->msg_open && !f->commit_pending);
	f->msg_open = true;
	f->first_data = true;
}

static void cb_data(void *user, const uint8_t *p, size_t n)
{
	struct fz *f = user;
	check(f->msg_open && n > 0);
	if (f->first_data)
		check(n >= 10 && memcmp(p, "Received: ", 10) == 0);
	f->first_data = false;
}

static void complete(struct fz *f)
{
	f->commit_pending = false;
	if (f->fail_commits) {
		smtp_session_message_done(f->s, -EIO, "spool");
	} else {
		f->queued_allowed++;
		smtp_session_message_done(f->s, 0, "ID1");
	}
}

static void cb_end(void *user, const struct smtp_envelope *env)
{
	struct fz *f = user;
	check(f->msg_open && !f->commit_pending && env->rcpt_count > 0);
	f->msg_open = false;
	f->commit_pending = true;
	if (f->sync_commit)
		complete(f);
}

static void cb_abort(void *user)
{
	struct fz *f = user;
	check(f->msg_open);
	f->msg_open = false;
}

static const struct smtp_server_cb fz_cb = {
	.send = cb_send,
	.close = cb_close,
	.starttls = cb_starttls,
	.auth_check = cb_auth,
	.message_begin = cb_begin,
	.message_data = cb_data,
	.message_end = cb_end,
	.message_abort = cb_abort,
};

static const char *const locals[] = {"example.com", "[192.0.2.10]"};
static const struct smtp_ipv4_prefix nets[] = {{0x0a4d0000u, 16}};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_server_conf c;
	struct smtp_server_stats st;
	struct fz f;
	size_t i = 1;

	if (size < 1)
		return 0;
	memset(&st, 0, sizeof(st));
	memset(&f, 0, sizeof(f));
	smtp_server_conf_defaults(&c);
	c.hostname = "mx.example.net";
	c.tls_available = true;
	c.local_domains = locals;
	c.local_domain_count = 2;
	c.allow_networks = nets;
	c.allow_network_count = (data[0] & 0x40) ? 1 : 0;
	c.listener = (enum smtp_listener_kind)(data[0] % 3);
	c.bare_eol = (data[0] & 0x04) ? SMTP_BARE_EOL_NORMALISE : SMTP_BARE_EOL_REJECT;
	c.long_line = (data[0] & 0x80) ? SMTP_LONG_LINE_ALLOW : SMTP_LONG_LINE_REJECT;
	c.max_message_size = (data[0] & 0x20) ? 300 : 10u << 20;
	c.max_pending_input = 600;
	f.sync_commit = data[0] & 0x08;
	f.fail_commits = (data[0] & 0x30) == 0x30;
	if (smtp_session_new(&c, &fz_cb, &f, &st, 0x0a4d0005u, 1, &f.s) < 0)
		abort();
	if (c.listener == SMTP_LISTENER_IMPLICIT_TLS)
		smtp_session_tls_started(f.s, "TLSv1.3", "TLS_AES_128_GCM_SHA256");
	smtp_session_start(f.s);
	while (i < size && !f.closed) {
		uint8_t ctl = data[i++];
		size_t len = (size_t)(ctl & 0x3f) + 1;
		if (len > size - i)
			len = size - i;
		size_t k = smtp_session_input(f.s, data + i, len);
		check(k <= len);
		check(k == len || !smtp_session_want_input(f.s));
		i += k;
		if (f.tls_pending) {
			f.tls_pending = false;
			smtp_session_tls_started(f.s, "TLSv1.3", "TLS_AES_128_GCM_SHA256");
		}
		if (f.commit_pending && ((ctl & 0x80) || k < len))
			complete(&f);
		else if ((ctl & 0xc0) == 0x40 && i + 1 < size && data[i] == 0xff)
			smtp_session_timeout(f.s);
		check(smtp_session_deadline(f.s) > 0);
	}
	if (f.commit_pending)
		complete(&f);
	if (!f.closed)
		smtp_session_peer_closed(f.s);
	smtp_session_free(f.s);
	check(!f.msg_open);
	/* a commit finishing after a timeout/close is accepted without a reply */
	check(st.messages_accepted >= f.queued_seen);
	return 0;
}
